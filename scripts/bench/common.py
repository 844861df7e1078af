"""Shared plumbing of `./dev bench`: the servers' addresses, a small
Elasticsearch client, PostgreSQL connections, and how processes are measured
(CPU seconds, peak RSS) without counting anyone else's work.

Every figure the harness reports comes from here, so the rules are in one
place: a tool's CPU is the user+system time of its own processes (from
wait4 when the process ends inside the measured phase, otherwise the
difference of /proc ticks across the phase); PostgreSQL's CPU is that of the
backends and walsenders of the benchmark's own database, minus the harness's
and the load generator's connections (marked by application_name);
Elasticsearch's CPU is the whole JVM's, which other users of the shared
server inflate (the report says so).
"""

import http.client
import json
import os
import signal
import statistics
import subprocess
import threading
import time
import urllib.parse

import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATE = os.environ.get("SLUICE_DEV_HOME", "/var/tmp/sluice-dev")
HZ = os.sysconf("SC_CLK_TCK")
HARNESS_APP = "bench-harness"
WRITER_APP = "bench-writer"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Env:
    """The servers `./dev services up` started (its SLUICE_TEST_* variables)."""

    def __init__(self):
        self.pg_url = os.environ["SLUICE_TEST_PG_URL"]
        self.pg_bin = os.environ["SLUICE_TEST_PG_BIN"]
        self.es_url = os.environ["SLUICE_TEST_ES_URL"].rstrip("/")
        u = urllib.parse.urlparse(self.pg_url)
        self.pg_host, self.pg_port = u.hostname, u.port or 5432
        self.pg_user, self.pg_password = u.username, urllib.parse.unquote(u.password or "")
        e = urllib.parse.urlparse(self.es_url)
        self.es_host, self.es_port = e.hostname, e.port or 9200

    def db_url(self, db):
        u = urllib.parse.urlparse(self.pg_url)
        return u._replace(path="/" + db).geturl()

    def pg_env(self, app):
        """libpq variables for command-line clients (psql, pgbench, pg_recvlogical)."""
        env = dict(os.environ)
        env.update(PGHOST=self.pg_host, PGPORT=str(self.pg_port), PGUSER=self.pg_user,
                   PGPASSWORD=self.pg_password, PGAPPNAME=app)
        return env


def connect(env, db="postgres", autocommit=True):
    return psycopg.connect(env.db_url(db), autocommit=autocommit, application_name=HARNESS_APP)


def pg_exec(env, db, *sql):
    with connect(env, db) as c:
        out = None
        for s in sql:
            cur = c.execute(s)
            out = cur.fetchall() if cur.description else None
        return out


# ---- Elasticsearch -----------------------------------------------------------
class Es:
    """One keep-alive HTTP connection (one per thread: not thread-safe)."""

    def __init__(self, env, timeout=120):
        self.env, self.timeout = env, timeout
        self.conn = None

    def request(self, method, path, body=None, ctype="application/json", ok=(200, 201)):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.env.es_host, self.env.es_port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
                r = self.conn.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        if r.status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data) if data else None

    def delete_index(self, name):
        self.request("DELETE", f"/{name}?ignore_unavailable=true", ok=(200, 404))

    def create_index(self, name, body):
        self.delete_index(name)
        self.request("PUT", f"/{name}", body)

    def refresh(self, name):
        self.request("POST", f"/{name}/_refresh")

    def count(self, name):
        return self.request("GET", f"/{name}/_count")["count"]

    def get_source(self, name, doc_id, realtime=True):
        r = self.request("GET", f"/{name}/_doc/{doc_id}?realtime={'true' if realtime else 'false'}", ok=(200, 404))
        return r.get("_source") if r and r.get("found") else None

    def bulk(self, body):
        r = self.request("POST", "/_bulk?filter_path=errors,items.*.error.type,items.*.status", body,
                         ctype="application/x-ndjson")
        if r.get("errors"):
            errs = [i for i in r.get("items", []) if any("error" in v for v in i.values())]
            # 409: an older version arrived after a newer one (external_gte),
            # as it may with several requests in flight; the newer one stays.
            bad = [e for e in errs if not any(v.get("status") == 409 for v in e.values())]
            if bad:
                raise RuntimeError(f"bulk errors: {bad[:3]}")

    def scan(self, name, sort_field="id", size=5000):
        """Every document of `name` in `sort_field` order (search_after)."""
        after = None
        while True:
            q = {"size": size, "sort": [{sort_field: "asc"}], "query": {"match_all": {}}}
            if after:
                q["search_after"] = after
            hits = self.request("POST", f"/{name}/_search?filter_path=hits.hits._id,hits.hits._source,hits.hits.sort",
                                q).get("hits", {}).get("hits", [])
            if not hits:
                return
            yield from hits
            after = hits[-1]["sort"]


def es_pid():
    try:
        with open(os.path.join(STATE, "es", "es.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# ---- processes ---------------------------------------------------------------
def ticks(pid):
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm(pid):
    """Start a new peak-RSS window (Linux: `5` into clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Proc:
    """A child process, measured: CPU from wait4 (its whole life), peak RSS
    from /proc VmHWM sampled every 0.1 s while it runs. (wait4's ru_maxrss
    is no good here: Linux carries the forking parent's peak over exec, so
    every child would report at least the harness's own RSS.)"""

    live = set()
    sampler = None

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.argv, self.log_path = argv, log_path
        self.logf = open(log_path, "ab")
        self.p = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)
        self.pid = self.p.pid
        self.hwm = 0
        Proc.live.add(self)
        Proc.start_sampler()
        self.started = time.monotonic()
        self.cpu_s = self.rss_mib = None
        self.rc = None

    def alive(self):
        return self.rc is None and self.wait(timeout=0) is None

    def wait(self, timeout=None):
        """Reaps the process; returns its exit code (None on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
                self.p.returncode = self.rc
                self.cpu_s = ru.ru_utime + ru.ru_stime
                self.rss_mib = self.hwm / 1024
                self.logf.close()
                Proc.live.discard(self)
                return self.rc
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.rc is not None:
            return self.rc
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        rc = self.wait(timeout)
        if rc is None:
            os.killpg(self.pid, signal.SIGKILL)
            rc = self.wait()
        return rc

    @classmethod
    def start_sampler(cls):
        if cls.sampler:
            return

        def loop():
            while True:
                for p in list(cls.live):
                    p.hwm = max(p.hwm, hwm_kib(p.pid))
                time.sleep(0.1)

        cls.sampler = threading.Thread(target=loop, daemon=True)
        cls.sampler.start()

    @classmethod
    def stop_all(cls):
        """Stops every process the harness started and has not reaped (after a failure)."""
        for p in list(cls.live):
            p.stop(signal.SIGTERM, timeout=10)

    def tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class PgCpu:
    """CPU of the PostgreSQL processes serving one database, sampled while a
    phase runs: backends and walsenders of `db`, except the harness's and the
    load generator's. Processes that exit between two samples lose at most
    one interval of CPU."""

    def __init__(self, env, db, exclude_apps=(HARNESS_APP, WRITER_APP), interval=0.1):
        self.env, self.db, self.exclude, self.interval = env, db, exclude_apps, interval
        self.first, self.last = {}, {}
        self.stop_ev = threading.Event()
        self.thread = None

    def sample(self, conn, initial=False):
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND coalesce(application_name, '') <> ALL(%s)", (self.db, list(self.exclude))).fetchall()
        for (pid,) in rows:
            t = ticks(pid)
            # A process that existed before the phase counts from the phase's
            # start; one that started during it, from zero.
            self.first.setdefault(pid, t if initial else 0)
            self.last[pid] = max(self.last.get(pid, 0), t)

    def start(self):
        conn = psycopg.connect(self.env.db_url("postgres"), autocommit=True, application_name=HARNESS_APP)
        self.sample(conn, initial=True)

        def loop():
            with conn:
                while not self.stop_ev.wait(self.interval):
                    try:
                        self.sample(conn)
                    except psycopg.Error:
                        return
                self.sample(conn)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        return sum(self.last[p] - self.first.get(p, 0) for p in self.last) / HZ


class Phase:
    """CPU of Elasticsearch and of PostgreSQL (for `db`) across one phase."""

    def __init__(self, env, db=None):
        self.env, self.db = env, db
        self.pg = PgCpu(env, db) if db else None

    def __enter__(self):
        self.es0 = ticks(es_pid() or 0)
        if self.pg:
            self.pg.start()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.t0
        self.es_cpu = (ticks(es_pid() or 0) - self.es0) / HZ
        self.pg_cpu = self.pg.stop() if self.pg else None


def summary(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def wait_until(pred, timeout, what, interval=0.05, alive=None):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if alive is not None and not alive():
            raise RuntimeError(f"process died while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def ratios(runs, base):
    """Per-run ratio to the same run's ceiling. While the load generator
    writes (live streaming), no tool can be faster than it, so the ceiling
    there is the lower of the co-tenant ceiling and that run's writer rate."""
    if not base:
        return None
    return summary([r["rate"] / min(b["rate"], r.get("writer_rate") if "lag_after_writer_s" in r else b["rate"])
                    for r, b in zip(runs, base) if r.get("rate") and b.get("rate")])
