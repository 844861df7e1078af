#!/usr/bin/env bash
# Checks the packaging files that cannot be run here (no Docker engine, no
# Kubernetes): docker/, deploy/k8s/, dashboards/.
#  - every YAML, JSON and TOML file parses;
#  - every metric a dashboard or alert uses is one src/ops/metrics.rs describes,
#    and every metric src/ records is named by one of its `names::` constants;
#  - every `sluice` subcommand and flag the container specs use exists in the
#    binary's --help, and every env var given to Sluice is one it reads
#    (a --help [env: ...] entry, a ${VAR} in the mounted sluice.toml, or a
#    logging variable);
#  - probes point at /health and /ready on the [http] listen port;
#  - the image runs as a non-root user.
#
#   scripts/check-packaging.sh            (builds target/debug/sluice if needed)
#   SLUICE_BIN=path/to/sluice scripts/check-packaging.sh
#   SLUICE_PACKAGING_ROOT=dir             check another tree (used by the tests)
# Exits non-zero on any failure. YAML needs PyYAML; without it the YAML
# checks are reported as SKIPPED (loudly), not passed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${SLUICE_PACKAGING_ROOT:-$HERE}
BIN=${SLUICE_BIN:-$HERE/target/debug/sluice}
if [ ! -x "$BIN" ]; then
  echo "check-packaging: building $BIN" >&2
  (cd "$HERE" && cargo build --quiet --bin sluice)
fi
exec python3 - "$ROOT" "$BIN" <<'PY'
import glob, json, os, re, subprocess, sys

root, binary = sys.argv[1], sys.argv[2]
failures, passes, skipped = [], [], []

def ok(msg): passes.append(msg)
def fail(msg): failures.append(msg)
def rel(p): return os.path.relpath(p, root)

try:
    import yaml
except ImportError:
    yaml = None
try:
    import tomllib
except ImportError:
    tomllib = None

def files(sub, exts):
    out = []
    base = os.path.join(root, sub)
    for d, _, fs in os.walk(base):
        out += [os.path.join(d, f) for f in sorted(fs) if f.endswith(exts)]
    return sorted(out)

# ---- parse everything -------------------------------------------------------
yaml_docs = {}
for f in files("docker", (".yml", ".yaml")) + files("deploy", (".yml", ".yaml")):
    if yaml is None:
        skipped.append(f"YAML parse of {rel(f)} (PyYAML missing: pip install pyyaml)")
        continue
    try:
        yaml_docs[f] = [d for d in yaml.safe_load_all(open(f)) if d is not None]
        ok(f"{rel(f)} parses as YAML")
    except yaml.YAMLError as e:
        fail(f"{rel(f)}: invalid YAML: {e}")

json_docs = {}
for f in files("dashboards", (".json",)):
    try:
        json_docs[f] = json.load(open(f))
        ok(f"{rel(f)} parses as JSON")
    except ValueError as e:
        fail(f"{rel(f)}: invalid JSON: {e}")

def parse_toml(text, where):
    if tomllib is None:
        skipped.append(f"TOML parse of {where} (Python < 3.11 has no tomllib)")
        return None
    try:
        t = tomllib.loads(text)
        ok(f"{where} parses as TOML")
        return t
    except tomllib.TOMLDecodeError as e:
        fail(f"{where}: invalid TOML: {e}")
        return None

tomls = {}  # where -> (text, parsed)
for f in files("docker", (".toml",)):
    text = open(f).read()
    tomls[rel(f)] = (text, parse_toml(text, rel(f)))
for f, docs in yaml_docs.items():
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "ConfigMap":
            for k, v in (d.get("data") or {}).items():
                if k.endswith(".toml"):
                    where = f"{rel(f)}:{d['metadata']['name']}/{k}"
                    tomls[where] = (v, parse_toml(v, where))

# ---- metric names -------------------------------------------------------------
src = open(os.path.join(root, "src", "ops", "metrics.rs")).read()
consts = dict(re.findall(r'pub const (\w+): &str = "(sluice_\w+)";', src))
specs = re.findall(r"MetricSpec \{\s*name: names::(\w+),\s*kind: Kind::(\w+)", src)
described = set()
for const, kind in specs:
    name = consts[const]
    described.add(name)
    if kind == "Histogram":
        described |= {name + s for s in ("_bucket", "_sum", "_count")}
if not specs:
    fail("src/ops/metrics.rs: no MetricSpec entries found (did the catalogue move?)")
undescribed = set(consts.values()) - {consts[c] for c, _ in specs}
for n in sorted(undescribed):
    fail(f"src/ops/metrics.rs: {n} has a name but no catalogue entry (no help text)")

def metric_uses(text):
    return set(re.findall(r"\bsluice_[a-z0-9_]+\b", text))

users = {rel(f): json.dumps(d) for f, d in json_docs.items()}
for f, docs in yaml_docs.items():
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "PrometheusRule":
            users[rel(f)] = json.dumps(d)
ops_doc = os.path.join(root, "docs", "operations.md")
if os.path.exists(ops_doc):
    users["docs/operations.md"] = open(ops_doc).read()
used_anywhere = set()
for where, text in users.items():
    names = metric_uses(text)
    used_anywhere |= names
    for n in sorted(names - described):
        fail(f"{where}: metric {n} is not described in src/ops/metrics.rs")
    if names and not names - described:
        ok(f"{where}: all {len(names)} metric names are described")
dash_names = set()
for f, d in json_docs.items():
    dash_names |= metric_uses(json.dumps(d))
base_described = {consts[c] for c, _ in specs}

# Every metric the code records is named by a constant of
# src/ops/metrics.rs (`names::X`) that the catalogue describes: a string
# literal could carry a typo, which would export a series no dashboard or
# alert knows. (`describe_*!` in the catalogue itself is not a recording.)
recorded = 0
for d, _, fs in os.walk(os.path.join(root, "src")):
    for f in fs:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(d, f)
        text = open(path).read()
        for arg in re.findall(r'(?<![\w])(?:counter|gauge|histogram)!\(\s*([^,)]+)', text):
            recorded += 1
            arg = arg.strip()
            m = re.fullmatch(r'(?:[\w:]*::)?names::(\w+)', arg)
            if not m:
                fail(f"{rel(path)}: records a metric named by `{arg}`, not by a names:: constant "
                     "of src/ops/metrics.rs")
            elif m.group(1) not in consts:
                fail(f"{rel(path)}: records metric names::{m.group(1)}, which src/ops/metrics.rs "
                     "does not name")
            elif consts[m.group(1)] not in base_described:
                fail(f"{rel(path)}: records metric {consts[m.group(1)]}, which src/ops/metrics.rs "
                     "does not describe")
if recorded == 0:
    fail("src: no metric recordings found (did the macros change?)")
ok(f"src: {recorded} metric recordings, all by names:: constants the catalogue describes")

# Labels a query groups or filters by exist on the metrics it queries.
spec_labels = {}
for const, labels in re.findall(
        r"MetricSpec \{\s*name: names::(\w+),\s*kind: Kind::\w+,\s*unit: [\w:]+,\s*labels: &\[([^\]]*)\]", src):
    spec_labels[consts[const]] = set(re.findall(r'"(\w+)"', labels))
if len(spec_labels) != len(specs):
    fail("src/ops/metrics.rs: could not read the labels of every MetricSpec")
def exprs(doc):
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from exprs(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from exprs(v)
query_docs = dict((rel(f), d) for f, d in json_docs.items())
for f, docs in yaml_docs.items():
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "PrometheusRule":
            query_docs[rel(f)] = d
checked_queries = 0
for where, doc in query_docs.items():
    for e in exprs(doc):
        metrics_in = {n for n in metric_uses(e)}
        allowed = {"instance", "job", "pod", "namespace"}
        for n in metrics_in:
            base = re.sub(r"_(bucket|sum|count)$", "", n) if n not in spec_labels else n
            allowed |= spec_labels.get(base, set())
            if n.endswith("_bucket"):
                allowed.add("le")
        used = set()
        if metrics_in and not re.search(r"\b(?!sluice_)[a-z_]+\{", e):
            for grp in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e):
                used |= {x.strip() for x in grp.split(",") if x.strip()}
        for n, sel in re.findall(r"\b(sluice_\w+)\{([^}]*)\}", e):
            used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel))
        for l in sorted(used - allowed):
            fail(f"{where}: `{e}` uses label {l}, which none of its metrics has")
        checked_queries += 1
for n in sorted(base_described):
    if not any(u == n or u.startswith(n + "_") and u[len(n):] in ("_bucket", "_sum", "_count") for u in dash_names):
        fail(f"dashboards: metric {n} is described but no dashboard panel shows it")

ok(f"labels of {checked_queries} dashboard and alert queries checked against the catalogue")

# ---- the sluice command line ------------------------------------------------------
def helptext(args):
    r = subprocess.run([binary, *args, "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return r.stdout

top = helptext([])
if top is None:
    fail(f"{binary} --help failed")
    top = ""
subcommands = set(re.findall(r"^  ([a-z][a-z-]*)\s", top.split("Commands:")[-1].split("Options:")[0], re.M))
logging_env = {"SLUICE_LOG", "RUST_LOG"}

def check_invocation(argv, env_names, where, toml_text):
    if not argv:
        fail(f"{where}: no sluice arguments")
        return None
    if argv[0] in ("sluice", "/usr/local/bin/sluice"):
        argv = argv[1:]
    positional = [a for a in argv if not a.startswith("-")]
    sub = positional[0] if positional else None
    if sub not in subcommands:
        fail(f"{where}: `sluice {sub}` is not a subcommand (have: {', '.join(sorted(subcommands))})")
        return None
    h = helptext([sub]) or ""
    for a in argv:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            if not re.search(r"(^|[\s,])" + re.escape(flag) + r"([\s=<,]|$)", h, re.M):
                fail(f"{where}: `sluice {sub}` has no flag {flag}")
            else:
                ok(f"{where}: sluice {sub} {flag} exists")
    help_env = set(re.findall(r"\[env: (\w+)=", h))
    live = "\n".join(l for l in (toml_text or "").splitlines() if not l.lstrip().startswith("#"))
    interpolated = set(re.findall(r"\$\{(\w+)\}", live))
    for e in env_names:
        if e in help_env or e in logging_env or e in interpolated:
            ok(f"{where}: env {e} is read by sluice")
        else:
            fail(f"{where}: env {e} is given to sluice but nothing reads it "
                 f"(not in `sluice {sub} --help`, not ${{{e}}} in its sluice.toml)")
    for e in sorted(interpolated):
        if e not in env_names:
            fail(f"{where}: sluice.toml needs ${{{e}}} but the container does not set it")
    m = re.search(r'^\s*listen\s*=\s*"[^"]*:(\d+)"', toml_text or "", re.M)
    return int(m.group(1)) if m else None

# Dockerfile: exec-form ENTRYPOINT + CMD, non-root USER.
dockerfile = os.path.join(root, "docker", "Dockerfile")
df = open(dockerfile).read()
stages = re.split(r"^FROM ", df, flags=re.M)
final = stages[-1]
users_ = re.findall(r"^USER\s+(\S+)", final, re.M)
if not users_ or users_[-1].split(":")[0] in ("root", "0"):
    fail("docker/Dockerfile: the runtime stage must end with a non-root USER")
else:
    ok(f"docker/Dockerfile runs as {users_[-1]}")
def exec_form(instr):
    m = re.findall(r"^" + instr + r"\s+(\[.*\])\s*$", final, re.M)
    return json.loads(m[-1]) if m else []
entry, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
env_df = set(re.findall(r"^ENV\s+(\w+)=", final, re.M))
if entry[:1] != ["sluice"]:
    fail("docker/Dockerfile: ENTRYPOINT should be [\"sluice\"]")
check_invocation(entry + cmd, env_df, "docker/Dockerfile", "")
expose = set(map(int, re.findall(r"^EXPOSE\s+(\d+)", final, re.M)))

# Compose.
compose = os.path.join(root, "docker", "compose.yml")
for d in yaml_docs.get(compose, []):
    svc = (d.get("services") or {}).get("sluice")
    if not svc:
        fail("docker/compose.yml: no `sluice` service")
        continue
    toml_text = tomls.get("docker/sluice.toml", ("", None))[0]
    mounts = " ".join(v if isinstance(v, str) else str(v) for v in svc.get("volumes", []))
    if "./sluice.toml:/etc/sluice/sluice.toml" not in mounts:
        fail("docker/compose.yml: the sluice service must mount ./sluice.toml")
    env = svc.get("environment") or {}
    env = set(env) if isinstance(env, dict) else {e.split("=")[0] for e in env}
    port = check_invocation(list(svc.get("command") or cmd), env, "docker/compose.yml sluice", toml_text)
    published = [str(p) for p in svc.get("ports", [])]
    if port is not None and not any(p.endswith(f":{port}") for p in published):
        fail(f"docker/compose.yml: [http] listen port {port} is not published")
    if port is not None and port not in expose:
        fail(f"docker/Dockerfile: EXPOSE {port} missing ([http] listen port)")
    for s in ("postgres",):
        c = " ".join(map(str, (d["services"].get(s) or {}).get("command", [])))
        if "wal_level=logical" not in c:
            fail("docker/compose.yml: postgres must run with wal_level=logical")
        else:
            ok("docker/compose.yml: postgres has wal_level=logical")
    for s in ("elasticsearch", "kibana"):
        if s not in d["services"]:
            fail(f"docker/compose.yml: no {s} service")
    tag = lambda s: str((d["services"].get(s) or {}).get("image", "")).rsplit(":", 1)[-1]
    if tag("kibana") != tag("elasticsearch"):
        fail(f"docker/compose.yml: Kibana {tag('kibana')} is not Elasticsearch's version {tag('elasticsearch')}")
    else:
        ok(f"docker/compose.yml: Kibana pinned to Elasticsearch's {tag('elasticsearch')}")
    # The saved objects the setup service imports: valid NDJSON, every data
    # view over an index a shipped mapping writes, every reference resolved.
    saved = os.path.join(root, "docker", "kibana", "saved-objects.ndjson")
    setup = d["services"].get("kibana-setup") or {}
    if "./kibana:/kibana:ro" not in " ".join(map(str, setup.get("volumes", []))):
        fail("docker/compose.yml: kibana-setup must mount ./kibana with the saved objects")
    targets = set()
    for f in glob.glob(os.path.join(root, "mappings", "*.toml")):
        text = open(f).read()
        targets.update(re.findall(r'^(?:index|alias)\s*=\s*"([^"]+)"', text, re.M))
    objs = [json.loads(l) for l in open(saved) if l.strip()]
    ids = {o["id"] for o in objs}
    for o in objs:
        if targets and o["type"] == "index-pattern" and o["attributes"]["title"] not in targets:
            fail(f"docker/kibana/saved-objects.ndjson: data view `{o['attributes']['title']}` is no shipped mapping's index")
        for r in o.get("references", []):
            if r["id"] not in ids:
                fail(f"docker/kibana/saved-objects.ndjson: {o['id']} references unknown {r['id']}")
    ok(f"docker/kibana/saved-objects.ndjson: {len(objs)} saved objects over shipped indices")

# Kubernetes: every container named sluice.
k8s_toml = next((v[0] for k, v in tomls.items() if k.startswith("deploy/") and k.endswith("/sluice.toml")), "")
found = 0
for f, docs in yaml_docs.items():
    if not rel(f).startswith("deploy"):
        continue
    for d in docs:
        spec = ((d.get("spec") or {}).get("template") or {}).get("spec") if isinstance(d, dict) else None
        if not spec:
            continue
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c.get("name") != "sluice":
                continue
            found += 1
            where = f"{rel(f)}:{d['metadata']['name']}/sluice"
            env = {e["name"] for e in c.get("env", [])}
            port = check_invocation(list(c.get("command", [])) + list(c.get("args", [])), env, where, k8s_toml)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
                g = (c.get(probe) or {}).get("httpGet") or {}
                # A query may qualify the answer (`/ready?standby=ok`).
                if (g.get("path") or "").split("?")[0] != path:
                    fail(f"{where}: {probe} must GET {path} (has {g.get('path')})")
                    continue
                p = g.get("port")
                p = ports.get(p, p)
                if port is not None and p != port:
                    fail(f"{where}: {probe} port {p} is not the [http] listen port {port}")
                else:
                    ok(f"{where}: {probe} -> {path} on port {p}")
            sc = c.get("securityContext") or {}
            if sc.get("runAsUser", 1) == 0 or sc.get("allowPrivilegeEscalation", True):
                fail(f"{where}: securityContext must not run as root or allow privilege escalation")
            for m in c.get("volumeMounts", []):
                names = {v["name"] for v in spec.get("volumes", [])}
                if m["name"] not in names:
                    fail(f"{where}: volumeMount {m['name']} has no volume")
if yaml is not None and found == 0:
    fail("deploy/k8s: no container named `sluice` found")

for s in skipped:
    print(f"!!! SKIPPED: {s}")
for p in passes:
    print(f"ok: {p}")
for f in failures:
    print(f"FAILED: {f}")
print(f"check-packaging: {len(passes)} passed, {len(failures)} failed, {len(skipped)} skipped")
sys.exit(1 if failures else 0)
PY
