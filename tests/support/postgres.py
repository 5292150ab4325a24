"""A real PostgreSQL 15 server for tests: `initdb` + `pg_ctl` in a temporary folder, on a
loopback port, as an unprivileged user where the tests run as root (PostgreSQL refuses
to run as root). One server per test process; each test gets a database of its own.

Never prints the server's password (a fresh random one per server).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
              "/usr/lib/postgresql/17/bin")
UNPRIVILEGED = "nobody"


def binaries() -> Path | None:
    """The folder of PostgreSQL's server programs, or None where none is installed."""
    for folder in CANDIDATES:
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="medsyft-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "medsyft"
        self.password = secrets.token_urlsafe(18)
        self._as = []
        if os.geteuid() == 0:
            shutil.chown(self.root, UNPRIVILEGED)
            self._as = ["runuser", "-u", UNPRIVILEGED, "--"]
        self.root.chmod(0o700)
        pw = self.root / "pw"
        pw.write_text(self.password + "\n")
        pw.chmod(0o600)
        if self._as:
            shutil.chown(pw, UNPRIVILEGED)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=scram-sha-256",
                  f"--pwfile={pw}", "-E", "UTF8", "--no-instructions")
        pw.unlink()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off", "start")
        self._n = 0

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / program), *args], check=True,
                       capture_output=True, timeout=120, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def new_database(self) -> str:
        """A fresh, empty database; its URL (password included)."""
        import psycopg

        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             password=self.password, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
