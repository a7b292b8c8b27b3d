"""A throwaway PostgreSQL server for tests: initdb and pg_ctl in a temporary directory, listening on a
free port on 127.0.0.1, always stopped and removed afterwards. Use it with `pytest_plugins = ["pg"]`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from harness import free_port
from sqlalchemy.engine import make_url

DATABASE = "roundtable_test"
SUPERUSER = "postgres"
START_TIMEOUT = 30  # seconds, for pg_ctl's own wait and for each command around it
STOP_TIMEOUT = 15
INSTALL_HINT = "install it with `apt-get install -y postgresql` (Debian), or put initdb and pg_ctl on PATH"


class PostgresUnavailable(Exception):
    """No PostgreSQL to start here; the message says what is missing."""


def find_bindir() -> Path:
    """Debian keeps the server binaries off PATH, one directory per major version: take the newest."""
    candidates = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable(f"PostgreSQL server binaries not found (no initdb/pg_ctl): {INSTALL_HINT}")


def _server_user() -> str | None:
    """initdb and postgres refuse to run as root, so as root we run them as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(f"running as root but there is no {SUPERUSER!r} user: {INSTALL_HINT}") from None
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root but `runuser` is missing (package util-linux)")
    return SUPERUSER


def _run(argv: Sequence[str], user: str | None, timeout: float) -> None:
    # The server's output must go to a log file (pg_ctl -l), never to these pipes: the server
    # outlives pg_ctl and would hold them open until the timeout.
    command = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    what = f"{Path(argv[0]).name} {argv[-1]}"
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd="/"
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{what} did not finish within {timeout} s: {error.output!r}") from None
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {' '.join(argv)}\n{result.stdout}\n{result.stderr}")


def _kill_leftover(data: Path) -> None:
    """The last resort when pg_ctl could not stop the server: kill the postmaster by its pid file."""
    with suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises once it is gone
            time.sleep(0.1)


def create_database(url: str, name: str) -> str:
    """Create database `name` on the server at `url` and return the URL for it."""
    server = make_url(url)
    createdb = [str(find_bindir() / "createdb"), "-h", str(server.host), "-p", str(server.port), "-U", SUPERUSER]
    _run([*createdb, name], _server_user(), START_TIMEOUT)
    return server.set(database=name).render_as_string(hide_password=False)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a fresh cluster and yield an asyncpg URL to an empty database in it."""
    bindir = find_bindir()
    user = _server_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="roundtable-pg-"))
    data = base / "data"
    try:
        if user is not None:
            shutil.chown(base, user, user)
        # trust: only this machine can connect (127.0.0.1), and the cluster lives for one session.
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]
        _run([*initdb, "--no-locale", "--no-sync"], user, START_TIMEOUT * 2)
        port = _start(bindir, base, user)
        try:
            yield create_database(f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{port}", DATABASE)
        finally:
            stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", str(STOP_TIMEOUT)]
            try:
                _run([*stop, "stop"], user, STOP_TIMEOUT + 5)
            except RuntimeError:
                _kill_leftover(data)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start(bindir: Path, base: Path, user: str | None, attempts: int = 3) -> int:
    """Start the server on a free port; another process may take the port first, so try a few."""
    failure: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        # Durability settings off: the cluster lives for one test session.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        command = [str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log")]
        try:
            _run([*command, "-o", options, "-w", "-t", str(START_TIMEOUT), "start"], user, START_TIMEOUT + 10)
            return port
        except RuntimeError as error:
            log = base / "server.log"
            failure = RuntimeError(f"{error}\n{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
            _kill_leftover(base / "data")
    raise RuntimeError(f"PostgreSQL did not start after {attempts} attempts: {failure}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """An asyncpg URL to a database on a throwaway server, shared by the whole test session.

    Without PostgreSQL the tests that need it are skipped, except in CI (CI=true), where
    they fail: CI installs PostgreSQL, so a missing one is a broken setup, not a choice."""
    try:
        find_bindir()
        _server_user()
    except PostgresUnavailable as missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {missing}", pytrace=False)
        pytest.skip(str(missing))
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """A new, empty database on the session's server, so that each test starts from nothing."""
    return create_database(postgres_url, f"t_{uuid.uuid4().hex[:16]}")
