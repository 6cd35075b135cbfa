"""A throwaway PostgreSQL server for tests and benchmarks: a fresh cluster in a temporary directory,
listening on 127.0.0.1 at a free port, stopped and deleted afterwards.

The server programs are found on ``PATH``, under ``$MOA_GRAPH_PG_BIN``, or in Debian's
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root: as root, the cluster
belongs to the ``postgres`` user and its programs run as that user.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "moa"


def server_programs() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (``RuntimeError`` when there is none)."""
    candidates = [os.environ.get("MOA_GRAPH_PG_BIN")]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else None)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    candidates += [str(path) for path in reversed(debian)]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL's server programs (initdb, pg_ctl) were not found: install PostgreSQL "
        "(Debian: apt install postgresql) or set MOA_GRAPH_PG_BIN to their directory"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """``start()`` returns the server's URL; ``stop()`` ends it and deletes its files.

    Example:
        >>> server = PostgresServer()
        >>> url = server.start()   # doctest: +SKIP
        >>> server.stop()
    """

    def __init__(self) -> None:
        self.bin = server_programs()
        self.root = Path(tempfile.mkdtemp(prefix="moa-graph-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            log = self.root / "server.log"
            extra = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{extra}")

    def start(self) -> str:
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c max_connections=200")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "start")  # fmt: skip
        self.started = True
        atexit.register(self.stop)  # also when the caller forgets, or fails before its own stop
        return self.url

    def stop(self) -> None:
        if self.started:
            self.started = False
            atexit.unregister(self.stop)
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
