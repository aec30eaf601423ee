"""The lab's bookkeeping: folder locks, the commit and environment a record names, paths as records name them."""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ..utils import PaperpruneError


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
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
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
REPO_ROOT = Path(__file__).resolve().parents[2]


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


_RUN_COMMIT: list[str | None] = []


def run_commit() -> str | None:
    """The commit of the code this process runs: `git_commit()` read once, at the first call (a run
    calls it as it starts; importing reads nothing). A long run's record is written after the checkout
    may have moved on, and HEAD at write time would name code that did not run."""
    if not _RUN_COMMIT:
        _RUN_COMMIT.append(git_commit())
    return _RUN_COMMIT[0]


def environment_info(device: str | torch.device | None = None) -> dict:
    """What a recorded result needs to be traced: versions, device, host, date, and `git_commit`,
    the commit of the code this process runs (`run_commit`; with `git_commit_now`, HEAD at the
    time of writing, when the checkout changed since)."""
    import torchvision

    from ..version import __version__

    try:
        import torch_pruning
        tp_version = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:
        tp_version = None
    dev = torch.device(device) if device is not None else None
    now = git_commit()
    info = {
        "paperprune": __version__,
        "git_commit": run_commit(),
        **({"git_commit_now": now} if now != run_commit() else {}),
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

