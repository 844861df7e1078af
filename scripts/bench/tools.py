"""The tools under test and the baselines, each started the way its
documentation says: Sluice (`sluice run` with a mapping file), PGSync
(`bootstrap`, then `pgsync` for one pass or `pgsync --daemon`, with Redis),
the raw `_bulk` loader, `pg_recvlogical`, and Sluice's reader alone
(examples/source_drain).

PGSync runs from its own virtualenv under the dev state directory. Its
Elasticsearch client (elasticsearch-py 7.17, as PGSync 7.3 pins it) sends
`GET /` for its product check and for `info()`; the integration-test build
of Elasticsearch the dev services run does not serve `GET /` (405), so a
sitecustomize.py in that virtualenv answers exactly that one request
locally, with the server's real version. Nothing else is changed.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time

from common import ROOT, STATE, Es, Proc, log
from data import COLUMNS, TABLE

SLUICE = os.path.join(ROOT, "target", "release", "sluice")
SOURCE_DRAIN = os.path.join(ROOT, "target", "release", "examples", "source_drain")
PGSYNC_VENV = os.path.join(STATE, "pgsync-venv")
PGSYNC_SPEC = "pgsync>=7,<8"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

SITECUSTOMIZE = '''"""Installed by Sluice's ./dev bench: answers the Elasticsearch client's
`GET /` (product check and info()) locally, because the integration-test
Elasticsearch distribution does not serve it. Every other request goes to
the server unchanged."""
import json, os

def _patch():
    try:
        from elasticsearch.connection import Urllib3HttpConnection, RequestsHttpConnection
    except Exception:
        return
    info = json.dumps({
        "name": "sluice-dev-1", "cluster_name": "sluice-dev", "tagline": "You Know, for Search",
        "version": {"number": os.environ.get("BENCH_ES_VERSION", "8.19.0"), "build_flavor": "default"},
    })
    headers = {"content-type": "application/json", "x-elastic-product": "Elasticsearch"}
    for cls in (Urllib3HttpConnection, RequestsHttpConnection):
        orig = cls.perform_request
        def perform_request(self, method, url, *a, _orig=orig, **kw):
            if method == "GET" and url == "/":
                return 200, headers, info
            return _orig(self, method, url, *a, **kw)
        cls.perform_request = perform_request

_patch()
'''


# ---- Sluice --------------------------------------------------------------------
class Sluice:
    name = "sluice"

    def __init__(self, env, work, db, index, slot, mode="initial", readers=4, mapping=None):
        """`mapping`: the mapping file's text (default: the bench table, every column)."""
        self.env, self.work, self.db, self.index, self.slot = env, work, db, index, slot
        os.makedirs(os.path.join(work, "mappings"), exist_ok=True)
        with open(os.path.join(work, "mappings", "bench.toml"), "w") as f:
            f.write(mapping or f'table = "public.{TABLE}"\nindex = "{index}"\n')
        self.config = os.path.join(work, "sluice.toml")
        with open(self.config, "w") as f:
            f.write(f'''mappings_dir = "mappings"
[postgres]
url = "{env.db_url(db)}"
slot = "{slot}"
publication = "{slot}"
[elasticsearch]
urls = ["{env.es_url}"]
[snapshot]
mode = "{mode}"
parallel_readers = {readers}
[http]
listen = "127.0.0.1:0"
''')
        self.proc = None

    def start(self):
        self.proc = Proc([SLUICE, "run", "--config", self.config], os.path.join(self.work, "sluice.log"))
        return self.proc

    def processes(self):
        return [self.proc.pid] if self.proc and self.proc.alive() else []

    def stop(self):
        if self.proc:
            self.proc.stop(signal.SIGTERM)

    def streaming(self):
        """The slot is in use: Sluice is past its snapshot and streaming."""
        from common import connect
        with connect(self.env) as c:
            r = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()
        return bool(r and r[0])


# ---- PGSync --------------------------------------------------------------------
def ensure_pgsync():
    """PGSync in its own virtualenv (never in the work tree), with the
    one-request shim; Redis from Debian."""
    py = os.path.join(PGSYNC_VENV, "bin", "python")
    if not os.path.exists(os.path.join(PGSYNC_VENV, "bin", "pgsync")):
        log(f"installing {PGSYNC_SPEC} into {PGSYNC_VENV}")
        subprocess.run(["python3", "-m", "venv", PGSYNC_VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", PGSYNC_SPEC], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    if not shutil.which("redis-server"):
        log("installing redis-server (apt)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    v = subprocess.run([os.path.join(PGSYNC_VENV, "bin", "pgsync"), "--version"], capture_output=True, text=True)
    return v.stdout.strip().replace("Version: ", "")


class Redis:
    """A private redis-server for PGSync's queue, on its own port, no persistence."""

    def __init__(self, work):
        self.work, self.port = work, free_port()
        self.proc = Proc(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", work], os.path.join(work, "redis.log"))
        for _ in range(200):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode == 0:
                return
            if not self.proc.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.proc.tail()}")

    def stop(self):
        self.proc.stop(signal.SIGTERM)


class PgSync:
    name = "pgsync"

    def __init__(self, env, work, db, index, es_version, nodes=None):
        """`nodes`: schema.json's `nodes` (default: the bench table, every column)."""
        self.env, self.work, self.db, self.index = env, work, db, index
        self.schema = os.path.join(work, "schema.json")
        with open(self.schema, "w") as f:
            json.dump([{"database": db, "index": index,
                        "nodes": nodes or {"table": TABLE, "columns": COLUMNS}}], f, indent=1)
        self.penv = dict(os.environ, PG_HOST=env.pg_host, PG_PORT=str(env.pg_port), PG_USER=env.pg_user,
                         PG_PASSWORD=env.pg_password, ELASTICSEARCH_URL=env.es_url, REDIS_HOST="127.0.0.1",
                         CHECKPOINT_PATH=work + "/", BENCH_ES_VERSION=es_version,
                         CONSOLE_LOGGING_HANDLER_MIN_LEVEL="WARNING",
                         # Its documentation: "increase this if you are getting read
                         # request timeouts" (default 10 s; a busy 2-core machine needs more).
                         ELASTICSEARCH_TIMEOUT="60")
        self.redis = None
        self.proc = None

    def bin(self, name):
        return os.path.join(PGSYNC_VENV, "bin", name)

    def ensure_redis(self):
        if not self.redis:
            self.redis = Redis(self.work)
            self.penv["REDIS_PORT"] = str(self.redis.port)

    def bootstrap(self):
        """`bootstrap --config schema.json`: triggers, view, replication slot."""
        self.ensure_redis()
        p = Proc([self.bin("bootstrap"), "--config", self.schema], os.path.join(self.work, "bootstrap.log"),
                 env=self.penv, cwd=self.work)
        if p.wait(600) != 0:
            raise RuntimeError(f"pgsync bootstrap failed:\n{p.tail()}")
        return p

    def one_pass(self):
        """`pgsync --config schema.json`: one sync pass, then exit."""
        return Proc([self.bin("pgsync"), "--config", self.schema], os.path.join(self.work, "pgsync.log"),
                    env=self.penv, cwd=self.work)

    def start(self):
        """`pgsync --config schema.json --daemon`."""
        self.ensure_redis()
        self.proc = Proc([self.bin("pgsync"), "--config", self.schema, "--daemon"],
                         os.path.join(self.work, "pgsync.log"), env=self.penv, cwd=self.work)
        return self.proc

    def processes(self):
        out = [self.proc.pid] if self.proc and self.proc.alive() else []
        if self.redis and self.redis.proc.alive():
            out.append(self.redis.proc.pid)
        return out

    def stop(self, redis=True):
        if self.proc:
            self.proc.stop(signal.SIGTERM, timeout=15)
        if redis and self.redis:
            self.redis.stop()
            self.redis = None


# ---- raw _bulk -------------------------------------------------------------------
def raw_bulk(env, bodies_list, concurrency):
    """Sends pre-rendered bodies with `concurrency` requests in flight;
    returns wall seconds."""
    q = queue.Queue()
    for b in bodies_list:
        q.put(b)
    errors = []

    def worker():
        es = Es(env)
        while True:
            try:
                b = q.get_nowait()
            except queue.Empty:
                return
            try:
                es.bulk(b)
            except Exception as e:  # noqa: BLE001 - reported after the run
                errors.append(e)
                return

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - t0


# ---- decoders ------------------------------------------------------------------
def pg_recvlogical(env, db, slot, end_lsn, log_path):
    """pg_recvlogical draining `slot` (pgoutput, proto 1) to /dev/null up to end_lsn."""
    return Proc([os.path.join(env.pg_bin, "pg_recvlogical"), "-d", db, "--slot", slot, "--start",
                 "--endpos", end_lsn, "-o", "proto_version=1", "-o", "publication_names=bench_pub",
                 "-f", "/dev/null", "--no-loop"], log_path, env=env.pg_env("pg_recvlogical"))


def source_drain(env, db, slot, end_lsn, log_path):
    """Sluice's reader (decode and value conversion) into a null sink."""
    return Proc([SOURCE_DRAIN, env.db_url(db), slot, "bench_pub", end_lsn], log_path)
