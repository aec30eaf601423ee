"""Small shared helpers: errors, atomic writes, seeding, device and environment records."""
from __future__ import annotations

import datetime
import glob
import io
import json
import os
import platform
import random
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class PaperpruneError(ValueError):
    """Bad input from the user: the message names the bad value and the fix."""


class DataNotFoundError(PaperpruneError, FileNotFoundError):
    """A dataset is missing or malformed; the message names the paths searched."""


def _atomic_write(path: str | os.PathLike, write) -> Path:
    """Write through a temporary file in the same directory, then rename over `path`.

    A crash or interrupt leaves either the old file or the new one, never half of one. A writer
    killed outright (SIGKILL, power loss) cannot remove its temporary; the next successful write
    of the same path removes it (each path has one writer at a time here: rank 0, one run a folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto" picks CUDA when available, else CPU. An unavailable CUDA is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PaperpruneError(f"device {str(device)!r} requested but CUDA is not available here; use --device cpu")
    return dev


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


def environment_info(device: str | torch.device | None = None) -> dict:
    """What a recorded result needs to be traced: versions, device, commit, host, date."""
    import torchvision

    from . import __version__

    try:
        import torch_pruning
        tp_version = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:
        tp_version = None
    dev = torch.device(device) if device is not None else None
    info = {
        "paperprune": __version__,
        "git_commit": git_commit(),
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
