"""Operating-system helpers of the local harness: users, child processes, files, ports.

Shared by the local PostgreSQL cluster and the local Redis. PostgreSQL refuses to run as
root, so when we are root its tools run as :data:`PG_OS_USER` (``runuser``) and the files
they read are chowned to it. Nothing here knows PostgreSQL's or Redis's protocol.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# PostgreSQL refuses to run as root, so when we are root its tools run as this OS user.
PG_OS_USER = "postgres"


class LocalClusterError(Exception):
    """A local cluster or Redis operation failed; the message says what, where, and the log."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port free on ``host`` right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def running_as_root() -> bool:
    return os.geteuid() == 0


def pg_os_user() -> pwd.struct_passwd:
    """The password entry of :data:`PG_OS_USER`, with an actionable error if it is missing."""
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise LocalClusterError(
            f"running as root, but the OS user {PG_OS_USER!r} does not exist; PostgreSQL "
            "refuses to run as root. Install the postgresql package (it creates the user) or "
            "run as an unprivileged user"
        ) from None


def as_pg_user(argv: Sequence[str]) -> list[str]:
    """``argv`` run as :data:`PG_OS_USER` when we are root, else unchanged."""
    if running_as_root():
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return list(argv)


def chown_to_pg_user(path: Path) -> None:
    """Give ``path`` to :data:`PG_OS_USER` when we are root (so its tools may use it)."""
    if running_as_root():
        user = pg_os_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """Our environment without any ``PG*`` variable, plus ``extra``."""
    # libpq reads many PG* variables (PGHOST, PGSSLMODE, PGSERVICE...); the caller's must
    # not redirect our tools to another server or change how they connect.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(extra or {})
    return env


def log_tail(log_file: Path, lines: int = 20) -> str:
    """The last ``lines`` of ``log_file``, indented, for an error message (never raises)."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(max(0, log_file.stat().st_size - 16_384))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return f"log file {log_file} does not exist"
    except OSError as exc:
        return f"cannot read log file {log_file}: {exc}"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"log file {log_file} is empty"
    return f"last lines of {log_file}:\n" + "\n".join(f"  {line}" for line in tail)


def first_blocking_dir(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory above ``path`` that ``uid`` may not traverse, by its mode bits."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return parent
    return None


def write_private_file(path: Path, text: str, *, for_pg_user: bool) -> None:
    """Write ``text`` with mode 0600 via a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    if for_pg_user:
        chown_to_pg_user(tmp)
    os.replace(tmp, path)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    # A zombie counts as gone: PID 1 in a container may never reap a daemon we stopped.
    if Path("/proc/self/stat").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return False
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (PostgreSQL's chdir to it)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    wanted = os.path.realpath(directory)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == wanted and process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found
