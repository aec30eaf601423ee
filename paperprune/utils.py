"""Small shared helpers: errors, atomic writes, seeding, devices and numbers given as arguments."""
from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import random
import re
import socket
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def json_default(o):
    """`json.dumps` default: numpy scalars as Python numbers, tensors as lists, paths as strings."""
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


