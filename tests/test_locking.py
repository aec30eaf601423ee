"""One run per folder: the OS lock, atomic writes that never delete a live writer's temporary,
two runs started at once, and a baseline cache keyed by the data's identity."""
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from paperprune.lab.experiment import RunConfig, run_experiment
from paperprune.lab.io import DirLock
from paperprune.utils import PaperpruneError, atomic_write_text

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        assert proc.poll() is None, f"the child ended early: {proc.communicate()}"
        time.sleep(0.05)
    assert predicate(), "timed out"


def test_second_holder_is_refused_naming_the_first(tmp_path):
    folder = str(tmp_path / "run")
    child = _child(f"from paperprune.lab.io import DirLock\nimport time\nwith DirLock({folder!r}, 'run'):\n"
                   "    print('held', flush=True)\n    time.sleep(60)")
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(PaperpruneError, match=rf"run folder .* is in use by pid {child.pid} on "):
        with DirLock(tmp_path / "run", "run"):
            pass
    child.kill()
    child.wait()
    with DirLock(tmp_path / "run", "run"):  # the kernel released the killed holder's lock
        info = json.loads((tmp_path / "run" / ".lock").read_text())
        assert info["pid"] == os.getpid()


def test_atomic_write_never_removes_a_live_writers_temporary(tmp_path):
    target = tmp_path / "run.json"
    child = _child("import time\nfrom paperprune.utils import _atomic_write\n"
                   f"def slow(f):\n    f.write(b'child')\n    print('writing', flush=True)\n    time.sleep(3)\n"
                   f"_atomic_write({str(target)!r}, slow)\nprint('done', flush=True)")
    assert child.stdout.readline().strip() == "writing"
    live = list(tmp_path.glob(".run.json.*.tmp"))
    assert len(live) == 1 and f".{child.pid}@" in live[0].name
    atomic_write_text(target, "parent")
    assert live[0].exists() and target.read_text() == "parent"
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "done", err
    assert target.read_text() == "child" and not list(tmp_path.glob("*.tmp"))


def test_atomic_write_removes_only_provably_stale_temporaries(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    host = socket.gethostname()
    dead = tmp_path / f".run.json.{dead_pid}@{host}.abcdefgh.tmp"
    remote = tmp_path / f".run.json.{dead_pid}@another-host.abcdefgh.tmp"
    alive = tmp_path / f".run.json.{os.getppid()}@{host}.abcdefgh.tmp"  # our parent is alive
    other_file = tmp_path / f".prune.json.{dead_pid}@{host}.abcdefgh.tmp"
    for p in (dead, remote, alive, other_file):
        p.write_text("half")
    atomic_write_text(tmp_path / "run.json", "done")
    assert not dead.exists()
    assert remote.exists() and alive.exists() and other_file.exists()


def _run_cmd(out, method, cache, epochs=2):
    return [sys.executable, "-m", "paperprune", "run", "--dataset", "synthetic", "--arch", "resnet56", "--method",
            method, "--flops-reduction", "0.5", "--pretrain-epochs", str(epochs), "--finetune-epochs", "1",
            "--per-class", "8", "--test-per-class", "4", "--samples-per-class", "3", "--batch-size", "24",
            "--device", "cpu", "--no-progress", "--no-deployed-latency", "--latency-repeats", "0",
            "--out", str(out), "--cache-dir", str(cache)]


@pytest.mark.slow
def test_two_runs_at_once(tmp_path):
    """Into one folder: the second is refused at once, naming the first, which completes with its own
    result. Into two folders sharing a baseline: it is trained once, the other run waits and reuses it."""
    cache, first_out, other_out = tmp_path / "cache", tmp_path / "a", tmp_path / "b"
    first = subprocess.Popen(_run_cmd(first_out, "stlp", cache), env=ENV, stderr=subprocess.PIPE, text=True)
    other = subprocess.Popen(_run_cmd(other_out, "l1", cache), env=ENV, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (first_out / "config.json").is_file(), first)
    saved = (first_out / "config.json").read_bytes()
    seconds = [subprocess.Popen(_run_cmd(first_out, method, cache), env=ENV, stderr=subprocess.PIPE, text=True)
               for method in ("l1", "stlp")]  # another config, and the very same command, at once
    for second in seconds:
        err = second.communicate(timeout=300)[1]
        assert second.returncode == 2, err
        assert f"is in use by pid {first.pid} on" in err and "Traceback" not in err
    assert first.poll() is None, "the first run ended before the second ones were refused"
    assert first.wait(timeout=900) == 0, first.stderr.read()[-3000:]
    assert other.wait(timeout=900) == 0, other.stderr.read()[-3000:]
    assert (first_out / "config.json").read_bytes() == saved
    record = json.loads((first_out / "run.json").read_text())
    assert record["config"]["method"] == "stlp"
    assert json.loads((first_out / "prune.json").read_text())["report"]["method"] == "stlp"
    reused = json.loads((other_out / "run.json").read_text())
    assert reused["config"]["method"] == "l1"
    baselines = [p for p in cache.iterdir() if p.is_dir()]
    # outside the repository a record names the baseline folder by its name alone (never an absolute path)
    assert len(baselines) == 1 and record["baseline_cache"] == reused["baseline_cache"] == baselines[0].name
    assert len((baselines[0] / "metrics.jsonl").read_text().splitlines()) == 2  # trained once, 2 epochs
    assert record["baseline"] == reused["baseline"]
    assert sorted(["pretrain" in record["resumed"], "pretrain" in reused["resumed"]]) == [False, True]
    assert not list(tmp_path.rglob("*.tmp"))


def write_fashion(folder: Path, train_per_class=12, test_per_class=4, shift=0, seed=0) -> Path:
    """Tiny Fashion-MNIST IDX files (gzip'd, as the Debian package ships them); `shift` adds to
    every test label (mod 10)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, extra in (("train", train_per_class, 0), ("t10k", test_per_class, shift)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = (rng.random((len(labels), 28, 28)) * 60 + labels[:, None, None] * 19).astype(np.uint8)
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write((0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
                    + images.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big")
                    + ((labels + extra) % 10).astype(np.uint8).tobytes())
    return folder


@pytest.mark.slow
def test_changed_data_root_or_data_retrains_the_baseline(tmp_path):
    from paperprune.lab.experiment import _test_loader, load_weights
    from paperprune.models import create_model
    from paperprune.lab.train import evaluate

    base = dict(dataset="fashion-mnist", arch="resnet56", method="l1", flops_reduction=0.5, pretrain_epochs=1,
                finetune_epochs=0, samples_per_class=3, batch_size=40, device="cpu")
    runs = {}
    roots = {"original": write_fashion(tmp_path / "original"), "shifted": write_fashion(tmp_path / "shifted", shift=1)}
    for name, root in roots.items():
        config = RunConfig(**base, data_root=str(root))
        runs[name] = run_experiment(config, tmp_path / name / "run", cache_dir=tmp_path / "cache", progress=False,
                                    latency_repeats=1, deployed_latency=False)
    original, shifted = runs["original"], runs["shifted"]
    assert shifted["data"]["root"] == str(roots["shifted"].resolve())
    assert original["data"]["fingerprint"] != shifted["data"]["fingerprint"]
    assert original["baseline_cache"] != shifted["baseline_cache"] and "pretrain" not in shifted["resumed"]
    # each baseline is evaluated on its own data: recompute the shifted one independently
    model = load_weights(create_model("resnet56", 10, 1), tmp_path / "cache" / shifted["baseline_cache"] / "final.pt")
    config = RunConfig(**base, data_root=str(roots["shifted"]))
    assert shifted["baseline"]["top1"] == evaluate(model, _test_loader(config, torch.device("cpu")),
                                                   torch.device("cpu"))["top1"]
    # the same root with a file changed in place is other data too
    write_fashion(roots["original"], shift=2)
    again = run_experiment(RunConfig(**base, data_root=str(roots["original"])), tmp_path / "again",
                           cache_dir=tmp_path / "cache", progress=False, latency_repeats=1, deployed_latency=False)
    assert again["baseline_cache"] not in (original["baseline_cache"], shifted["baseline_cache"])
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 3
