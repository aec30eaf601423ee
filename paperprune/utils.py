"""Small shared helpers: errors, atomic writes, seeding, device and environment records."""
from __future__ import annotations

import datetime
import fcntl
import glob
import hashlib
import io
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class PaperpruneError(ValueError):
    """Bad input from the user: the message names the bad value and the fix."""


class DataNotFoundError(PaperpruneError, FileNotFoundError):
    """A dataset is missing or malformed; the message names the paths searched."""


_HOST = socket.gethostname()


def _temp_owner(tmp: Path, name: str) -> tuple[int, str] | None:
    """(pid, host) from a temporary named `.NAME.PID@HOST.XXXXXXXX.tmp`; None for other names."""
    middle = tmp.name[len(name) + 2:-len(".tmp")].rpartition(".")[0]
    match = re.fullmatch(r"(\d+)@(.*)", middle)
    return (int(match.group(1)), match.group(2)) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_if_stale(tmp: Path, name: str) -> None:
    """Remove another writer's temporary only when it is provably abandoned: a live writer holds
    an flock on its temporary, and (when the name says so) its process on this host is alive.
    A temporary of another host, or of a live process here, is left alone."""
    owner = _temp_owner(tmp, name)
    if owner is not None and (owner[1] != _HOST or (owner[0] != os.getpid() and _pid_alive(owner[0]))):
        return
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a live writer holds it
        os.close(fd)
        return
    try:
        tmp.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Write through a temporary file in the same directory, then rename over `path`.

    A crash or interrupt leaves either the old file or the new one, never half of one. The
    temporary is named after the writing process (`.NAME.PID@HOST.XXXXXXXX.tmp`) and flock'ed
    while it is written. A writer killed outright (SIGKILL, power loss) cannot remove it; the
    next successful write of the same path removes such a temporary when it is provably stale
    (unlocked, and its process on this host is gone), never one that another writer is filling.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise PaperpruneError(f"cannot write {path}: {e.strerror or e}; choose a writable location") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: the name (pid@host) still protects it here
            pass
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        _remove_if_stale(stale, path.name)
    return path


class DirLock:
    """An OS lock (flock on FOLDER/.lock) that makes one process the owner of a folder.

    `with DirLock(folder, what):` creates the folder and takes the lock. When another process
    holds it, `wait=False` raises a PaperpruneError naming the holder (pid, host, command, since),
    `wait=True` reports the holder on stderr and blocks until it is released. The kernel drops
    the lock when its holder exits, however it exits, so a killed run never leaves it behind.
    """

    def __init__(self, folder: str | os.PathLike, what: str, *, wait: bool = False, fix: str = ""):
        self.folder, self.what, self.wait, self.fix = Path(folder), what, wait, fix
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(Path(self.folder / ".lock").read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process"
        return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
                f" ({info.get('command', '?')})")

    def __enter__(self) -> "DirLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PaperpruneError(f"cannot use {self.what} folder {str(self.folder)!r}: {e.strerror or e}; "
                                  "choose a writable location") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                holder = self.holder()
                os.close(fd)
                raise PaperpruneError(f"{self.what} folder {str(self.folder)!r} is in use by {holder}; "
                                      f"wait for it to finish{self.fix}") from None
            print(f"waiting for {self.holder()}, which holds {self.folder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            raise PaperpruneError(f"cannot lock {self.what} folder {str(self.folder)!r} ({e.strerror or e}): its "
                                  "filesystem does not support locks; choose a folder on a local disk") from None
        info = {"pid": os.getpid(), "host": _HOST, "command": " ".join(sys.argv)[:300],
                "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None = None, *, setting: str = "--device") -> torch.device:
    """`None` or "auto" picks CUDA when available, else CPU. An unknown name or an unavailable CUDA
    device is an error naming `setting` (the flag or argument the user typed)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PaperpruneError(f"{setting} {str(device)!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise PaperpruneError(f"{setting} {str(device)!r}: only cpu and cuda devices are supported; use auto, "
                              "cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PaperpruneError(f"{setting} {str(device)!r} requested but CUDA is not available here; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PaperpruneError(f"{setting} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), numbered from 0")
    return dev


def as_number(value, setting: str, kind: type = float, *, optional: bool = False):
    """`value` as a Python int or float: numpy and 0-d torch scalars are accepted wherever a Python
    number is; anything else (bools, strings, arrays) is a PaperpruneError naming `setting`."""
    if optional and value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PaperpruneError(f"{setting}={value!r} is not {what}" + (" (or None)" if optional else ""))
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise PaperpruneError(f"{setting}={value!r} is not {what}")
        return int(value)
    return float(value)


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding `path` (default: this package), with '+dirty' if modified."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


#: the repository this package sits in; records name files inside it relative to it (`recorded_path`)
REPO_ROOT = Path(__file__).resolve().parents[1]


def recorded_path(path: str | os.PathLike | None) -> str | None:
    """How a record names a file (e.g. a baseline's weights): its path relative to the repository
    (REPO_ROOT, forward slashes) when it lies inside, else its file name alone; never an absolute
    path of the machine that ran. The weights' identity is their hash (`state_sha256`), recorded
    beside it. None stays None."""
    if path is None:
        return None
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return resolved.name


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state_dict's tensors: their bytes, in key order (a model's weights, whatever file
    format or path they were read from)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


#: the commit of the code this process imported (a long run's records are written after the
#: checkout may have moved on: HEAD at write time would name code that did not run)
IMPORTED_COMMIT = git_commit()


def environment_info(device: str | torch.device | None = None) -> dict:
    """What a recorded result needs to be traced: versions, device, host, date, and `git_commit`,
    the commit of the code this process imported (with `git_commit_now`, HEAD at the time of
    writing, when the checkout changed since)."""
    import torchvision

    from . import __version__

    try:
        import torch_pruning
        tp_version = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:
        tp_version = None
    dev = torch.device(device) if device is not None else None
    now = git_commit()
    info = {
        "paperprune": __version__,
        "git_commit": IMPORTED_COMMIT,
        **({"git_commit_now": now} if now != IMPORTED_COMMIT else {}),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_pruning": tp_version,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev) if dev is not None else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info
