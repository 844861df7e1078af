#!/usr/bin/env bash
# ./dev faults [--ignored] [cargo test filter]
#
# The fault matrix (tests/it/fault_*.rs, and the outage, slot-loss, SIGTERM
# and reindex cases in tests/it/run_*.rs; all part of `./dev test`): runs the
# integration suite (or the tests a filter names) with SLUICE_FAULT_REPORT
# set, each fault case writes one table row (area,
# fault, test, seconds held, seconds to recover, outcome), and the rows
# replace the table between the fault-matrix markers in RELIABILITY.md, under
# a line with the date and commit. A failing case still fails the command.
# --ignored also runs the long fault cases (a SIGKILL during a 1M-row
# transaction); with it and no filter, only the fault_* tests run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ignored=()
if [ "${1:-}" = --ignored ]; then ignored=(--include-ignored); shift; fi
filter=${1:-}
# The ignored long cases are fault cases only (never the soak or the 1M-row runs of other areas).
if [ ${#ignored[@]} -gt 0 ] && [ -z "$filter" ]; then filter=fault_; fi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
set +e
SLUICE_FAULT_REPORT=$report cargo test --release --test it "$filter" -- --nocapture "${ignored[@]}"
rc=$?
set -e
commit=$(git rev-parse --short HEAD)
dirty=$(git diff --quiet HEAD -- src tests || echo "+changes")
python3 - "$report" "$commit$dirty" "$rc" <<'PY'
import datetime, re, sys
report, commit, rc = sys.argv[1], sys.argv[2], sys.argv[3]
def key(row):
    return tuple(c.strip() for c in row.split("|")[1:4])  # area, fault, test

new_rows = {key(l): l.rstrip("\n") for l in open(report) if l.startswith("|")}
text = open("RELIABILITY.md").read()
begin, end = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"
# A run of some cases (a filter) replaces their rows and keeps the others'.
old = re.search(re.escape(begin) + "(.*?)" + re.escape(end), text, flags=re.S).group(1)
rows = {key(l): l for l in old.splitlines() if l.startswith("| ") and not l.startswith("| area")}
rows.update(new_rows)
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
table = [f"Latest run: {when}, commit {commit}, {len(new_rows)} cases"
         + ("" if rc == "0" else f", cargo test exit {rc} (a case failed: see its output)")
         + f"; the table keeps each case's latest row ({len(rows)} cases).", "",
         "| area | fault | test | held (s) | recovery (s) | outcome |",
         "|---|---|---|---|---|---|", *sorted(rows.values())]
new = re.sub(re.escape(begin) + ".*?" + re.escape(end),
             lambda _: begin + "\n" + "\n".join(table) + "\n" + end, text, flags=re.S)
open("RELIABILITY.md", "w").write(new)
print(f"[faults] {len(new_rows)} rows written to RELIABILITY.md", file=sys.stderr)
PY
exit "$rc"
