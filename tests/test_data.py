"""Tests for paperprune.lab.data: real Fashion-MNIST files, generated CIFAR pickles and ImageFolder
trees in the exact on-disk formats, the device loader's augmentation/sharding and the
synthetic planted hierarchy."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paperprune.lab import data
from paperprune.utils import DataNotFoundError, PaperpruneError

FASHION_DIR = data.SYSTEM_FASHION_MNIST
needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="dataset-fashion-mnist not installed")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("PAPERPRUNE_DATA", raising=False)


# ----------------------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion():
    return data.load_tensors("fashion-mnist", "train"), data.load_tensors("fashion-mnist", "test")


@needs_fashion
def test_fashion_mnist_real_files(fashion):
    (x, y), (xt, yt) = fashion
    assert x.shape == (60000, 1, 32, 32) and x.dtype == torch.uint8
    assert xt.shape == (10000, 1, 32, 32) and yt.shape == (10000,)
    assert y.dtype == torch.int64
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 6000))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert x[:, :, border].max() == 0 and xt[:, :, border].max() == 0
    assert x[:, :, 2:30, 2:30].max() == 255
    # the file's first image sits unshifted inside the padding
    raw = gzip.open(FASHION_DIR / "train-images-idx3-ubyte.gz").read()
    first = torch.from_numpy(np.frombuffer(raw, np.uint8, count=784, offset=16).reshape(28, 28).copy())
    assert torch.equal(x[0, 0, 2:30, 2:30], first)


@needs_fashion
def test_fashion_mnist_mean_std_recomputed(fashion):
    (x, _), _ = fashion
    # exact moments from the histogram of pixel values (float64)
    counts = torch.bincount(x.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum() / counts.sum()
    std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
    info = data.dataset_info("fashion-mnist")
    assert info.mean[0] == pytest.approx(mean.item(), abs=1e-8)
    assert info.std[0] == pytest.approx(std.item(), abs=1e-8)


def test_fashion_mnist_info_taxonomy():
    info = data.dataset_info("fashion-mnist")
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 32)
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    members = sorted(c for v in info.taxonomy.values() for c in v)
    assert members == list(range(10))
    assert [info.class_names[c] for c in info.taxonomy["footwear"]] == ["Sandal", "Sneaker", "Ankle boot"]


def _write_idx(path: Path, magic: int, array: np.ndarray, gz: bool):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _fashion_tree(folder: Path, n: int = 20, gz: bool = True, image_magic: int = 0x803):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, (img, lab) in data._FASHION_FILES.items():
        _write_idx(folder / img, image_magic, rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(folder / lab, 0x801, np.arange(n) % 10, gz)


def test_fashion_mnist_uncompressed_and_env(tmp_path, monkeypatch):
    _fashion_tree(tmp_path / "fashion-mnist", gz=False)
    monkeypatch.setenv("PAPERPRUNE_DATA", str(tmp_path))
    x, y = data.load_tensors("fashion-mnist", "test")
    assert x.shape == (20, 1, 32, 32) and torch.equal(y, torch.arange(20) % 10)


def test_fashion_mnist_bad_magic(tmp_path):
    _fashion_tree(tmp_path, image_magic=0x0802)
    with pytest.raises(DataNotFoundError, match=r"magic number 00000802, expected 00000803") as e:
        data.load_tensors("fashion-mnist", root=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(e.value)


def test_fashion_mnist_truncated(tmp_path):
    _fashion_tree(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataNotFoundError, match="malformed IDX"):
        data.load_tensors("fashion-mnist", root=tmp_path)


def test_missing_root_names_searched_paths(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as e:
        data.load_tensors("fashion-mnist", root=missing)
    msg = str(e.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg and "PAPERPRUNE_DATA" in msg
    for name, hint in [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]:
        with pytest.raises(DataNotFoundError) as e:
            data.load_tensors(name, root=missing)
        assert str(missing / hint) in str(e.value) and str(missing) in str(e.value)
    with pytest.raises(DataNotFoundError) as e:
        data.make_loaders("imagenet", root=missing)
    assert str(missing) in str(e.value) and "train/" in str(e.value)


def test_unknown_name_and_split():
    with pytest.raises(PaperpruneError, match="cifar100"):
        data.dataset_info("mnist")
    with pytest.raises(PaperpruneError, match="mnist"):
        data.load_tensors("mnist")
    with pytest.raises(PaperpruneError, match="valid"):
        data.load_tensors("synthetic", "valid")
    with pytest.raises(PaperpruneError, match="make_loaders"):
        data.load_tensors("imagenet")


# ----------------------------------------------------------------------------- CIFAR

def _pickle(path: Path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar_root(tmp_path):
    """Small CIFAR-10 and CIFAR-100 python-pickle folders with the real keys."""
    rng = np.random.default_rng(1)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    batches = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        d = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": [(i + k) % 10 for k in range(6)],
             b"batch_label": name.encode(), b"filenames": [b"x.png"] * 6}
        batches[name] = d
        _pickle(c10 / name, d)
    names10 = [f"c10_{k}" for k in range(10)]
    _pickle(c10 / "batches.meta", {b"label_names": [n.encode() for n in names10], b"num_cases_per_batch": 6})

    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    fine = np.arange(200) % 100
    coarse = (fine * 7) % 20  # 5 fine classes per superclass, interleaved
    for name, n in [("train", 200), ("test", 40)]:
        _pickle(c100 / name, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                              b"fine_labels": fine[:n].tolist(), b"coarse_labels": coarse[:n].tolist(),
                              b"filenames": [b"x.png"] * n})
    _pickle(c100 / "meta", {b"fine_label_names": [f"f{k}".encode() for k in range(100)],
                            b"coarse_label_names": [f"super{k}".encode() for k in range(20)]})
    return tmp_path, batches, names10


def test_cifar10_layout_and_labels(cifar_root):
    root, batches, names10 = cifar_root
    x, y = data.load_tensors("cifar10", "train", root=root)
    assert x.shape == (30, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    first = batches["data_batch_1"][b"data"][2]
    # CHW: the first 1024 bytes are the red plane row by row, then green, then blue
    assert torch.equal(x[2, 0].flatten(), torch.from_numpy(first[:1024].copy()))
    assert torch.equal(x[2, 2], torch.from_numpy(first[2048:].reshape(32, 32).copy()))
    assert x[2, 1, 3, 5].item() == first[1024 + 3 * 32 + 5]
    assert y[6:12].tolist() == batches["data_batch_2"][b"labels"]
    xt, yt = data.load_tensors("cifar10", "test", root=root / "cifar-10-batches-py")
    assert torch.equal(xt, torch.from_numpy(batches["test_batch"][b"data"].reshape(6, 3, 32, 32).copy()))
    info = data.dataset_info("cifar10", root)
    assert info.class_names == names10 and info.taxonomy == {} and (info.in_channels, info.image_size) == (3, 32)


def test_cifar100_taxonomy_from_coarse_labels(cifar_root):
    root, _, _ = cifar_root
    x, y = data.load_tensors("cifar100", "train", root=root)
    assert x.shape == (200, 3, 32, 32) and torch.equal(y, torch.arange(200) % 100)
    info = data.dataset_info("cifar100", root / "cifar-100-python")
    assert info.num_classes == 100 and info.class_names[:2] == ["f0", "f1"]
    assert list(info.taxonomy) == [f"super{k}" for k in range(20)]
    for k in range(20):
        assert info.taxonomy[f"super{k}"] == [f for f in range(100) if (f * 7) % 20 == k]


def test_cifar_env_lookup_and_malformed(cifar_root, monkeypatch):
    root, _, _ = cifar_root
    monkeypatch.setenv("PAPERPRUNE_DATA", str(root))
    assert data.load_tensors("cifar10", "test")[0].shape == (6, 3, 32, 32)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        data.load_tensors("cifar10", "train")
    _pickle(root / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataNotFoundError, match="3072"):
        data.load_tensors("cifar10", "test")


def test_make_loaders_cifar(cifar_root):
    root, _, _ = cifar_root
    train, test, info = data.make_loaders("cifar10", root=root, batch_size=4, seed=3)
    assert info.num_classes == 10 and len(train) == 7 and len(test) == 2
    xb, yb = next(iter(train))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    got = torch.cat([yb for _, yb in test])
    assert got.tolist() == [5, 6, 7, 8, 9, 0]


# ----------------------------------------------------------------------------- ImageNet

def test_imagenet_imagefolder(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in [("train", 3), ("val", 2)]:
        for cls in ["n001", "n002", "n003"]:
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (30 + 5 * i, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    info = data.dataset_info("imagenet", tmp_path)
    assert info.class_names == ["n001", "n002", "n003"] and info.num_classes == 3 and info.image_size == 224
    train, val, info2 = data.make_loaders("imagenet", root=tmp_path, batch_size=4, num_workers=0, per_class=2)
    assert info2 == info and len(train.dataset) == 6 and len(train) == 1 and len(val) == 2
    xb, yb = next(iter(train))
    assert xb.shape == (4, 3, 224, 224) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    labels = torch.cat([y for _, y in val])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    # two ranks: validation shards are disjoint and cover the set; train uses a DistributedSampler
    shards = [data.make_loaders("imagenet", root=tmp_path, batch_size=2, num_workers=0, rank=r, world_size=2)
              for r in range(2)]
    idx = [list(s[1].sampler) for s in shards]
    assert sorted(idx[0] + idx[1]) == list(range(6)) and not set(idx[0]) & set(idx[1])
    assert [len(list(s[0].sampler)) for s in shards] == [4, 4]
    # calibration: training images under the val transform, class-balanced, in a fixed order
    calib = data.imagenet_calibration_loader(tmp_path, samples_per_class=2, batch_size=3, num_workers=0)
    xs, ys = zip(*calib)
    assert torch.cat(ys).bincount().tolist() == [2, 2, 2]
    assert all(x.shape[1:] == (3, 224, 224) for x in xs)
    again = torch.cat([x for x, _ in data.imagenet_calibration_loader(tmp_path, samples_per_class=2,
                                                                      batch_size=3, num_workers=0)])
    assert torch.equal(torch.cat(xs), again)


# ----------------------------------------------------------------------------- DeviceLoader

def _indexed_images(n: int, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (n, c, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n)


def _loader(x, y, **kw):
    args = dict(batch_size=8, mean=(0.0,) * x.shape[1], std=(1.0,) * x.shape[1], train=True, seed=5)
    args.update(kw)
    return data.DeviceLoader(x, y, **args)


def test_crop_flip_only_moves_pixels():
    x, _ = _indexed_images(4)
    off = torch.tensor([[4, 4], [4, 4], [0, 0], [8, 2]])
    flips = torch.tensor([False, True, False, True])
    out = data.crop_flip(x, off, flips)
    assert out.shape == x.shape
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], torch.flip(x[1], dims=[-1]))
    assert torch.equal(out[2, :, 4:, 4:], x[2, :, :28, :28])
    assert out[2, :, :4].max() == 0 and out[2, :, :, :4].max() == 0
    shifted = torch.zeros_like(x[3])
    shifted[:, :28, 2:] = x[3, :, 4:, :30]  # padded rows 8..39, cols 2..33
    assert torch.equal(out[3], torch.flip(shifted, dims=[-1]))


def test_device_loader_augments_each_image_by_a_crop_and_flip():
    x, y = _indexed_images(12)
    loader = _loader(x, y, batch_size=12)
    xb, yb = next(iter(loader))
    assert xb.shape == (12, 3, 32, 32)
    # every (offset, flip) of the source image, as one batch of 162 candidates
    offsets = torch.cartesian_prod(torch.arange(9), torch.arange(9)).repeat(2, 1)
    flips = torch.arange(162) >= 81
    for img, label in zip(xb, yb):
        candidates = data.crop_flip(x[label].expand(162, 3, 32, 32), offsets, flips).float() / 255
        assert ((candidates - img).abs().flatten(1).amax(1) < 1e-6).any()


def test_device_loader_normalises():
    x, y = _indexed_images(6)
    loader = _loader(x, y, train=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), batch_size=6)
    xb, _ = next(iter(loader))
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(xb, (x.float() / 255 - mean) / std)


def test_device_loader_determinism_and_epochs():
    x, y = _indexed_images(40)

    def epoch(e, seed=5):
        loader = _loader(x, y, seed=seed)
        loader.set_epoch(e)
        return [(a.clone(), b.clone()) for a, b in loader]

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 5
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(torch.cat([p[1] for p in a]), torch.cat([p[1] for p in c]))
    assert not torch.equal(torch.cat([p[1] for p in a]), torch.cat([p[1] for p in epoch(1, seed=6)]))
    assert sorted(torch.cat([p[1] for p in a]).tolist()) == list(range(40))


def test_device_loader_test_mode_in_order():
    x, y = _indexed_images(21)
    loader = _loader(x, y, train=False)
    loader.set_epoch(3)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [8, 8, 5]
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(21))
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x.float() / 255)


def test_device_loader_sharding_two_ranks():
    x, y = _indexed_images(43)
    train = [_loader(x, y, batch_size=5, rank=r, world_size=2) for r in range(2)]
    for t in train:
        t.set_epoch(4)
    seen = [torch.cat([b[1] for b in t]) for t in train]
    assert [len(t) for t in train] == [4, 4] and [len(s) for s in seen] == [20, 20]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    # full shards (no drop_last) cover everything but the one-sample remainder
    full = [torch.cat([b[1] for b in _loader(x, y, batch_size=5, rank=r, world_size=2, drop_last=False)])
            for r in range(2)]
    assert [len(f) for f in full] == [21, 21] and len(set(full[0].tolist()) | set(full[1].tolist())) == 42
    test = [torch.cat([b[1] for b in _loader(x, y, batch_size=5, train=False, rank=r, world_size=2)])
            for r in range(2)]
    assert sorted(test[0].tolist() + test[1].tolist()) == list(range(43))
    assert not set(test[0].tolist()) & set(test[1].tolist())
    with pytest.raises(PaperpruneError, match="rank"):
        _loader(x, y, rank=2, world_size=2)


def test_device_loader_small_shard_is_one_batch():
    x, y = _indexed_images(6)
    loader = _loader(x, y, batch_size=128)
    assert len(loader) == 1 and len(next(iter(loader))[1]) == 6


# ----------------------------------------------------------------------------- subsets

def test_class_balanced_batch_counts():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    images = torch.arange(20).view(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    xi, yi = data.class_balanced_batch(images, labels, 5, seed=1)
    assert torch.bincount(yi).tolist() == [5, 3, 5]
    assert torch.equal(labels[xi[:, 0, 0, 0]], yi) and len(set(xi[:, 0, 0, 0].tolist())) == 13
    xj, yj = data.class_balanced_batch(images, labels, 5, seed=1)
    assert torch.equal(xi, xj) and torch.equal(yi, yj)
    xk, _ = data.class_balanced_batch(images, labels, 5, seed=2)
    assert not torch.equal(xi, xk)
    with pytest.raises(PaperpruneError):
        data.class_balanced_batch(images, labels, 0)


def test_make_loaders_per_class_synthetic():
    train, test, info = data.make_loaders("synthetic", batch_size=16, per_class=4, seed=7)
    assert torch.bincount(train.labels).tolist() == [4] * 9 and len(test.labels) == 450
    again, _, _ = data.make_loaders("synthetic", batch_size=16, per_class=4, seed=7)
    assert torch.equal(train.images, again.images)
    assert info.taxonomy == {"group0": [0, 1, 2], "group1": [3, 4, 5], "group2": [6, 7, 8]}


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_hierarchical():
    x, y = data.load_tensors("synthetic", "train")
    x2, y2 = data.load_tensors("synthetic", "train")
    xt, yt = data.load_tensors("synthetic", "test")
    assert x.shape == (1800, 3, 32, 32) and x.dtype == torch.uint8 and xt.shape == (450, 3, 32, 32)
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x[:450], xt)
    assert torch.bincount(y).tolist() == [200] * 9 and torch.bincount(yt).tolist() == [50] * 9
    info = data.dataset_info("synthetic")
    onehot = torch.nn.functional.one_hot(y, 9).double()
    means = (onehot.T @ x.flatten(1).double() / 200) / 255
    dist = torch.cdist(means, means)
    group = torch.arange(9) // 3
    same = (group[:, None] == group[None, :]) & ~torch.eye(9, dtype=torch.bool)
    assert dist[same].max() < dist[group[:, None] != group[None, :]].min()
    # classes inside a group are still distinct
    assert dist[same].min() > 0.5
    pixels = x.double() / 255
    torch.testing.assert_close(torch.tensor(info.mean, dtype=torch.float64), pixels.mean((0, 2, 3)))
