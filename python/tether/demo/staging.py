"""The demo staging's pieces: the silly-demo backend pod and the managed database that
only the backend's network reaches (a PostgreSQL server in a namespace behind the pod).

Used by ``tether demo``, by the end-to-end tests of the seed's scenes and by benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import testbed

APP = Path(__file__).resolve().parent / "app.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SCHEMA = "CREATE TABLE IF NOT EXISTS videos (id text PRIMARY KEY, title text NOT NULL);"


@dataclass
class Database:
    pod: testbed.Pod
    user: str
    password: str
    name: str
    port: int = 5432


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def database(factory: testbed.PodFactory, *, behind: testbed.Pod | None, user: str = "silly",
             password: str | None = None, name: str = "main") -> Iterator[Database]:
    """A real PostgreSQL server with password auth, reachable only from ``behind``."""
    password = password or secrets.token_hex(8)
    data = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    try:
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        subprocess.run(_as_postgres() + [str(PG_BIN / "initdb"), "-D", str(data / "db"), "-U",
                                         "postgres", "--auth-local=trust",
                                         "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        with open(data / "db" / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '*'\nunix_socket_directories = '{data}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        with open(data / "db" / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        server = f'exec "{PG_BIN / "postgres"}" -D "{data / "db"}" >"{data}/postgres.log" 2>&1'
        pod = factory("db", behind=behind, cmd=_as_postgres() + ["sh", "-c", server])
        pod.wait_port(5432, timeout=30)
        sql = (f"CREATE ROLE {user} LOGIN PASSWORD '{password}';"
               f"CREATE DATABASE {name} OWNER {user};")
        psql = _as_postgres() + ["psql", "-X", "-q", "-h", str(data), "-U", "postgres"]
        for statement in sql.split(";")[:-1]:
            subprocess.run(psql + ["-c", statement], check=True, capture_output=True, timeout=30)
        env = dict(os.environ, PGPASSWORD=password)
        subprocess.run(["psql", "-X", "-q", "-h", str(data), "-U", user, "-d", name, "-c", SCHEMA],
                       check=True, capture_output=True, timeout=30, env=env)
        yield Database(pod=pod, user=user, password=password, name=name)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class Staging:
    pod: testbed.Pod  #: the backend pod
    app_pid: int  #: the backend app's process: the target (it has the DB credentials)
    db: Database | None
    log: Path  #: the backend app's output

    @property
    def target(self) -> str:
        return f"process/{self.app_pid}"

    @property
    def url(self) -> str:
        return f"http://{self.pod.ip}:8080"


@contextmanager
def silly_demo(factory: testbed.PodFactory, *, with_database: bool = True
               ) -> Iterator[Staging]:
    """The backend pod (app.py on :8080) with its database credentials in its environment.

    The database name ``silly-demo-db`` resolves only in the pod (its /etc/hosts), and the
    database itself sits in a namespace only the pod can reach.
    """
    log_dir = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    log = log_dir / "app.log"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PORT": "8080",
           "DB_HOST": "silly-demo-db", "DB_PORT": "5432"}
    cmd = ["sh", "-c", f'exec "{sys.executable}" "{APP}" >"{log}" 2>&1']
    try:
        # The database sits behind the backend, so the backend pod comes first and its app
        # starts once the database's address is in the pod's /etc/hosts.
        pod = factory("silly-demo", env=env)
        with contextlib.ExitStack() as stack:
            db = None
            if with_database:
                db = stack.enter_context(database(factory, behind=pod))
                env.update(DB_USER=db.user, DB_PASSWORD=db.password, DB_NAME=db.name)
                with open(pod.root / "etc/hosts", "a") as hosts:
                    hosts.write(f"{db.pod.ip} silly-demo-db\n")
            app = pod.popen(cmd, env=env)
            pod.wait_port(8080, timeout=15)
            yield Staging(pod=pod, app_pid=app.pid, db=db, log=log)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
