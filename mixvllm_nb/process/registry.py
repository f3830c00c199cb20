"""The registry of servers: one JSON file per server, shared by every kernel, the CLI and Jupyter.

Files live in ``$MIXVLLM_STATE_DIR/servers`` (default: Jupyter's runtime dir + ``/mixvllm``),
are created with mode 0600 because they hold the server's API key, and are written atomically.
A name is claimed with ``O_EXCL`` so two processes cannot start two servers under one name.
The state folder must be the user's own with mode 0700: a folder another user can write lets them
plant records (an "attached" server pointing anywhere) or read keys. Changes to an existing record
(``update``, ``remove``) hold a lock file, so a removed record never comes back; reads take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ServerNotFoundError
from .tree import carries_marker, process_matches

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class UnsafeStateDirError(ConfigError):
    """The state folder (or its ``servers`` folder) is not the user's own with mode 0700."""


def _private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 if missing; refuse it unless it is ours and 0700."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeStateDirError(f"state dir {path}: not a directory; set MIXVLLM_STATE_DIR to a folder of your own")
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.getuid() or mode & 0o077:
        raise UnsafeStateDirError(
            f"state dir {path}: owned by uid {info.st_uid} with mode {mode:04o}; it must be owned by you "
            f"(uid {os.getuid()}) with mode 0700 (other users could plant or read servers): "
            f"chmod 700 it, or set MIXVLLM_STATE_DIR to a folder of your own"
        )
    return path


def state_dir() -> Path:
    """Return the folder holding the registry and the logs (created 0700 on first use).

    Raises UnsafeStateDirError (a ConfigError) when it belongs to another user or others may open it.
    """
    override = os.environ.get("MIXVLLM_STATE_DIR")
    if override:
        path = Path(override).expanduser()
    else:
        from jupyter_core.paths import jupyter_runtime_dir

        path = Path(jupyter_runtime_dir()) / "mixvllm"
    return _private_dir(path)


def servers_dir() -> Path:
    """Return the folder of the registry's JSON files (ours, mode 0700, like the state dir)."""
    return _private_dir(state_dir() / "servers")


@contextmanager
def locked() -> Iterator[Path]:
    """Hold the registry's write lock; yield the servers folder.

    Only changes to existing records take it: a reader sees either the old or the new file
    (``os.replace``), never a partial one, so reads stay lock-free.
    """
    folder = servers_dir()
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def launch_lock(identity: str) -> Iterator[None]:
    """Hold the lock of one config identity while deciding to reuse or launch (across processes).

    Two requests for the same config at once (two POSTs, two kernels) would otherwise both find no
    server and load the model twice: the second waits here, then finds the first's record.
    """
    fd = os.open(servers_dir() / f".launch-{identity}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class ServerRecord:
    """What another process needs to find, use and stop a server."""

    name: str
    backend: str
    model: str
    served_model_name: str
    host: str
    port: int
    base_url: str
    api_key: str = field(repr=False, default="")
    pid: int | None = None
    create_time: float | None = None
    marker: str | None = None
    log_path: str | None = None
    owner: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    identity: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    kind: str = "launched"  # "launched" by us, or "attached" (an external endpoint)
    detached: bool = False
    state: str = "starting"
    exit_code: int | None = None
    sleeping: bool = False  # put to sleep (vLLM's sleep mode): the proxy wakes it for the next request
    cluster: dict[str, Any] = field(default_factory=dict)  # a Ray job's cluster address, job id and node

    @property
    def attached(self) -> bool:
        """True for an external endpoint we only talk to, never start or stop."""
        return self.kind == "attached"

    def process_alive(self) -> bool:
        """Return True when the server's main process is still the one we started.

        Same pid, same start stamp, and it carries the server's marker: a pid reused by
        another program (or a record without ``create_time``) is not this server. A server on a Ray
        cluster is alive while Ray says its job runs (asked at most every two seconds).
        """
        if self.cluster:
            from .ray_jobs import RayJob

            return RayJob.from_record(self.cluster).poll() is None
        if self.pid is None or process_matches(self.pid, self.create_time) is None:
            return False
        return self.marker is None or carries_marker(self.pid, self.marker)

    def is_dead(self, *, ask_cluster: bool = True) -> bool:
        """Return True for a launched server whose process is gone.

        ``ask_cluster=False``: a server on a Ray cluster counts as alive rather than being asked of Ray over
        the network (for the proxy's event loop: its owner's heartbeat keeps its state, and a job that is
        gone refuses the connection anyway).
        """
        if self.attached or (self.cluster and not ask_cluster):
            return False
        return not self.process_alive()


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid server name, else raise ConfigError (a ValueError) saying what is allowed."""
    if not _NAME_RE.match(name or ""):
        raise ConfigError(
            f"invalid server name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def _path(name: str) -> Path:
    return servers_dir() / f"{validate_name(name)}.json"


def claim(name: str) -> bool:
    """Reserve ``name`` atomically; return False when a record with that name exists."""
    try:
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump({"name": name, "state": "claimed", "claimed_by": os.getpid()}, handle)
    return True


def save(record: ServerRecord) -> None:
    """Write ``record`` atomically with mode 0600 (it holds the API key)."""
    with locked():
        _write(record)


def _write(record: ServerRecord) -> None:
    path = _path(record.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{record.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update(name: str, **changes: Any) -> None:
    """Change fields of a saved record, if it still exists (a record removed meanwhile stays removed)."""
    with locked():
        record = get(name, missing_ok=True)
        if record is None:
            return
        for key, value in changes.items():
            setattr(record, key, value)
        _write(record)


def _read(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("state") == "claimed":
        return None  # a launch in progress in another process
    known = ServerRecord.__dataclass_fields__
    try:
        return ServerRecord(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


def get(name: str, *, missing_ok: bool = False) -> ServerRecord | None:
    """Return the record called ``name``; raise ServerNotFoundError unless ``missing_ok``."""
    path = _path(name)
    record = _read(path) if path.exists() else None
    if record is None and not missing_ok:
        known = ", ".join(r.name for r in list_records()) or "none"
        raise ServerNotFoundError(f"no server named {name!r}; registered: {known}")
    return record


def list_records() -> list[ServerRecord]:
    """Return every registered server, oldest first (dead ones included)."""
    records = [r for p in sorted(servers_dir().glob("*.json")) if (r := _read(p)) is not None]
    return sorted(records, key=lambda r: r.started_at)


def _same_server(a: ServerRecord, b: ServerRecord) -> bool:
    def key(r: ServerRecord) -> tuple[Any, ...]:
        return r.kind, r.pid, r.create_time, r.marker, r.started_at

    return key(a) == key(b)


def remove(name: str, *, expected: ServerRecord | None = None) -> bool:
    """Forget the record called ``name``; return whether a file was removed (no error if already gone).

    With ``expected``, remove it only while it still describes that server: a name taken over by a
    new server in the meantime keeps its record.
    """
    try:
        path = _path(name)
    except ValueError:
        return False
    with locked():
        if expected is not None:
            current = _read(path) if path.exists() else None
            if current is None or not _same_server(current, expected):
                return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
    return True


def clean_dead() -> list[str]:
    """Remove the records of launched servers whose process is gone; return their names.

    Nothing is signalled: a record whose pid now belongs to another program is simply dropped.
    """
    removed = []
    for record in list_records():
        if record.is_dead() and remove(record.name, expected=record):
            removed.append(record.name)
    return removed


def unique_name(base: str) -> str:
    """Return ``base`` or ``base-2``, ``base-3``, ... whichever no record uses yet."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", base).strip("-._")[:56] or "server"
    candidate, n = base, 1
    while _path(candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate
