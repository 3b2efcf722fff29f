"""A throwaway PostgreSQL server for tests: initdb on a temporary data directory, a free port on
127.0.0.1, trust authentication, stopped and deleted after.

Binaries: PATH, else the Debian layout /usr/lib/postgresql/<version>/bin (the `postgresql`
package does not put initdb on PATH).  PostgreSQL refuses to run as root: as root the server
runs as the `postgres` user the Debian package creates (through runuser), on a data directory
that user owns.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return cands[-1] if cands else None


def missing_reason() -> str | None:
    """Why no server can be started here (None: it can)."""
    for b in ("initdb", "pg_ctl"):
        if find_bin(b) is None:
            return f"PostgreSQL's {b} not found (apt-get install postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 not installed (pip install psycopg2-binary)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server():
    """Yields a function db_url(name) that creates database `name` and returns its URL."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    data_root = tempfile.mkdtemp(prefix="autotune-pg-")
    data = os.path.join(data_root, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(data_root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    log = os.path.join(data_root, "server.log")

    def run(cmd):
        r = subprocess.run(prefix + cmd, capture_output=True, text=True, cwd=data_root)
        if r.returncode:
            extra = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout[-1000:]}{r.stderr[-2000:]}{extra}")

    started = False
    try:
        run([initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data_root} "
                "-c fsync=off -c max_connections=200")
        run([pg_ctl, "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start"])
        started = True
        import psycopg2

        def db_url(name: str) -> str:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
            conn.close()
            return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"

        yield db_url
    finally:
        if started:
            with contextlib.suppress(Exception):
                run([pg_ctl, "-D", data, "-m", "immediate", "-w", "-t", "30", "stop"])
            time.sleep(0.1)
        shutil.rmtree(data_root, ignore_errors=True)
