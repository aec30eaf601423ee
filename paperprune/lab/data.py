"""Datasets, class taxonomies and device-resident loaders (METHOD.md section 3).

Nothing here comes from the paper beyond the list of datasets (CIFAR-10, CIFAR-100,
ImageNet); the readers, the Fashion-MNIST default, the synthetic planted hierarchy, the
augmentation recipe (the CIFAR lineage's pad-4 crop + flip, ImageNet's standard transforms)
and the normalisation constants are reconstruction.

Data is never downloaded silently. Each reader looks in, in order:
- an explicit ``root`` and its ``<name>`` subfolder (and nowhere else when it is given), or otherwise
- ``$PAPERPRUNE_DATA/<name>`` and ``$PAPERPRUNE_DATA`` itself, then
- for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``).
Missing or malformed files raise :class:`~paperprune.utils.DataNotFoundError` naming every
path searched and how to provide the data. ``download=True`` fetches CIFAR-10/100 or
Fashion-MNIST into the root with torchvision's downloaders.

Conventions: images are uint8 ``[N, C, H, W]`` on the CPU, labels int64 ``[N]``; loaders
yield ``(float images, int64 labels)`` on the requested device, normalised with
``DatasetInfo.mean/std``.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils import DataNotFoundError, PaperpruneError, as_number, resolve_device

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagenet", "synthetic")

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Our choice of the Fashion-MNIST hierarchy (not given by the dataset): garments worn on the
# upper body or as one piece are "tops", shoes are "footwear"; Trouser and Bag fit neither
# and form "other".
FASHION_MNIST_TAXONOMY = {"tops": [0, 2, 3, 4, 6], "footwear": [5, 7, 9], "other": [1, 8]}
# Per-channel mean/std of the 60,000 padded 32x32 training images scaled to [0, 1]
# (the tensors load_tensors returns, so the zero border counts), computed in float64 over
# all pixels; tests/test_data.py recomputes them. Unpadded 28x28 gives 0.2860/0.3530.
FASHION_MNIST_MEAN = (0.218999832,)
FASHION_MNIST_STD = (0.331811373,)
# The CIFAR lineage's constants (HRank/CHIP training scripts), kept so that checkpoints
# trained there see the inputs they were trained on. CIFAR-10's std is the widely copied
# 0.2023/0.1994/0.2010 rather than the per-pixel std (about 0.247/0.243/0.261).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_FILES = {"cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                            "meta": "batches.meta"},
                "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"}}


@dataclass
class DatasetInfo:
    """What models, statistics and taxonomies need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    taxonomy: dict[str, list[int]] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise PaperpruneError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise PaperpruneError(f"unknown split {split!r}; use 'train' or 'test'")
    return split


def _bases(name: str, root) -> list[Path]:
    """Folders to search, in order: the explicit root (and its <name> subfolder, the layout
    $PAPERPRUNE_DATA has, so one root serves every dataset), else $PAPERPRUNE_DATA, else system."""
    if root is not None:
        return [Path(root).expanduser(), Path(root).expanduser() / name]
    bases = []
    env = os.environ.get("PAPERPRUNE_DATA")
    if env:
        bases += [Path(env).expanduser() / name, Path(env).expanduser()]
    if name == "fashion-mnist":
        bases.append(SYSTEM_FASHION_MNIST)
    return bases


def _not_found(name: str, searched: list[str], how: str, root) -> DataNotFoundError:
    lines = "\n".join(f"  {s}" for s in searched) or "  (nothing)"
    env = "" if root is not None or os.environ.get("PAPERPRUNE_DATA") else \
        " ($PAPERPRUNE_DATA is not set)"
    return DataNotFoundError(f"{name} data not found. Searched{env}:\n{lines}\nTo provide it: {how}")


def _download_root(name: str, root) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PAPERPRUNE_DATA")
    if env:
        return Path(env).expanduser() / name
    raise PaperpruneError(f"download=True for {name} needs a destination: pass root=DIR or set PAPERPRUNE_DATA")


# --------------------------------------------------------------------------- Fashion-MNIST

_FASHION_HOW = ("`apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist), "
                "or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                "t10k-labels-idx1-ubyte.gz (gzip'd or not) in a folder and pass root=FOLDER or set "
                "PAPERPRUNE_DATA=DIR with them in DIR/fashion-mnist; or pass download=True with a root.")


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_dir(root) -> Path:
    searched = []
    for base in _bases("fashion-mnist", root):
        for folder in (base, base / "fashion-mnist", base / "FashionMNIST" / "raw"):
            if _idx_file(folder, _FASHION_FILES["train"][0]) or _idx_file(folder, _FASHION_FILES["test"][0]):
                return folder
            searched.append(str(folder))
    raise _not_found("fashion-mnist", searched, _FASHION_HOW, root)


def _read_idx(path: Path, magic: int, dims: tuple[int, ...]) -> np.ndarray:
    """Read an IDX file (ubyte data): check the magic number and that the size matches the header."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataNotFoundError(f"cannot read IDX file {path}: {e}; replace it with an intact copy") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        got = raw[:4].hex() if len(raw) >= 4 else "a truncated header"
        raise DataNotFoundError(f"malformed IDX file {path}: magic number {got}, expected {magic:08x}; "
                                f"replace it with an intact copy")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if shape[1:] != dims or len(raw) != header + math.prod(shape):
        raise DataNotFoundError(f"malformed IDX file {path}: header shape {shape} and {len(raw) - header} data "
                                f"bytes, expected (N, {', '.join(map(str, dims))}) with N*{math.prod(dims)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_fashion(split: str, root, download: bool):
    if download:
        from torchvision.datasets import FashionMNIST
        root = _download_root("fashion-mnist", root)
        FashionMNIST(str(root), train=split == "train", download=True)
    folder = _fashion_dir(root)
    image_stem, label_stem = _FASHION_FILES[split]
    paths = [_idx_file(folder, image_stem), _idx_file(folder, label_stem)]
    if None in paths:
        missing = [s for s, p in zip((image_stem, label_stem), paths) if p is None]
        raise DataNotFoundError(f"fashion-mnist folder {folder} lacks {', '.join(f'{m}[.gz]' for m in missing)}. "
                                f"To provide it: {_FASHION_HOW}")
    images = _read_idx(paths[0], 0x803, (28, 28))
    labels = _read_idx(paths[1], 0x801, ())
    if len(images) != len(labels) or (len(labels) and labels.max() >= 10):
        raise DataNotFoundError(f"fashion-mnist files in {folder} disagree: {len(images)} images, {len(labels)} "
                                f"labels (max {labels.max() if len(labels) else None}, expected < 10)")
    x = torch.zeros(len(images), 1, 32, 32, dtype=torch.uint8)
    x[:, 0, 2:30, 2:30] = torch.from_numpy(images.copy())
    return x, torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------- CIFAR

def _cifar_how(name: str) -> str:
    d = _CIFAR_DIRS[name]
    return (f"put the python-pickle folder {d}/ (from the {name} python tarball, the one torchvision reads) "
            f"in a folder and pass root=FOLDER (or root=FOLDER/{d}), or set PAPERPRUNE_DATA=DIR with it in "
            f"DIR/{name}/{d} or DIR/{d}; or pass download=True with a root.")


def _cifar_dir(name: str, root) -> Path:
    searched = []
    files = _CIFAR_FILES[name]
    for base in _bases(name, root):
        for folder in (base / _CIFAR_DIRS[name], base):
            if (folder / files["meta"]).is_file() or (folder / files["test"][0]).is_file():
                return folder
            searched.append(str(folder))
    raise _not_found(name, searched, _cifar_how(name), root)


def _unpickle(path: Path, name: str) -> dict:
    """Load a CIFAR pickle (Python 2 or 3 written) with encoding='bytes', keys decoded to str."""
    if not path.is_file():
        raise DataNotFoundError(f"{name}: missing file {path}. To provide it: {_cifar_how(name)}")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DataNotFoundError(f"{name}: cannot unpickle {path} ({type(e).__name__}: {e}); "
                                f"replace it with an intact copy") from e
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"{name}: {path} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(d: dict, key: str, count: int, path: Path, name: str) -> list[str]:
    if key not in d or len(d[key]) != count:
        raise DataNotFoundError(f"{name}: {path} needs the key {key!r} with {count} names "
                                f"(keys {sorted(d)}, {len(d.get(key, []))} names)")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in d[key]]


def _labels(d: dict, key: str, n: int, num_classes: int, path: Path, name: str) -> torch.Tensor:
    if key not in d:
        raise DataNotFoundError(f"{name}: {path} lacks the key {key!r} (has {sorted(d)})")
    y = torch.as_tensor(np.asarray(d[key], dtype=np.int64))
    if y.shape != (n,) or (n and (y.min() < 0 or y.max() >= num_classes)):
        raise DataNotFoundError(f"{name}: {path} has {key} of shape {tuple(y.shape)} with values outside "
                                f"[0, {num_classes}) or not matching the {n} images")
    return y


def _cifar_batch(path: Path, name: str, label_keys: tuple[str, ...], num_classes: tuple[int, ...]):
    d = _unpickle(path, name)
    data = np.asarray(d.get("data", np.empty(0)))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataNotFoundError(f"{name}: {path} key 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, [_labels(d, k, len(x), c, path, name) for k, c in zip(label_keys, num_classes)]


def _load_cifar(name: str, split: str, root, download: bool):
    if download:
        from torchvision.datasets import CIFAR10, CIFAR100
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        root = _download_root(name, root)
        cls(str(root), train=split == "train", download=True)
    folder = _cifar_dir(name, root)
    key, k = ("labels", 10) if name == "cifar10" else ("fine_labels", 100)
    parts = [_cifar_batch(folder / f, name, (key,), (k,)) for f in _CIFAR_FILES[name][split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1][0] for p in parts])


@functools.lru_cache(maxsize=8)
def _cifar100_taxonomy(folder: Path, mtime: float) -> dict[str, list[int]]:
    """The 20 CIFAR-100 superclasses: fine -> coarse read off the train file's label pairs."""
    meta = _unpickle(folder / "meta", "cifar100")
    coarse_names = _names(meta, "coarse_label_names", 20, folder / "meta", "cifar100")
    _, (fine, coarse) = _cifar_batch(folder / "train", "cifar100", ("fine_labels", "coarse_labels"),
                                     (100, len(coarse_names)))
    pairs = torch.unique(fine * len(coarse_names) + coarse)
    pair_fine, pair_coarse = pairs // len(coarse_names), pairs % len(coarse_names)
    if len(torch.unique(pair_fine)) != len(pair_fine):
        raise DataNotFoundError(f"cifar100: {folder / 'train'} maps some fine label to several coarse labels")
    return {coarse_names[c]: pair_fine[pair_coarse == c].tolist() for c in range(len(coarse_names))}


# --------------------------------------------------------------------------- ImageNet

_IMAGENET_HOW = ("an ImageFolder tree ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG (val sorted into "
                 "the same class folders as train); pass root=ROOT or set PAPERPRUNE_DATA=DIR with it in "
                 "DIR/imagenet. There is no download.")


def _imagenet_dir(root) -> Path:
    searched = []
    for base in _bases("imagenet", root):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return base
        searched.append(f"{base} (needs train/ and val/)")
    raise _not_found("imagenet", searched, _IMAGENET_HOW, root)


def _imagenet_classes(folder: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes
    try:
        train, _ = find_classes(str(folder / "train"))
        val, _ = find_classes(str(folder / "val"))
    except FileNotFoundError as e:
        raise DataNotFoundError(f"imagenet: {e}. To provide it: {_IMAGENET_HOW}") from e
    if train != val:
        raise DataNotFoundError(f"imagenet: {folder}/train has {len(train)} class folders and {folder}/val "
                                f"{len(val)}, and they differ; sort val into the train class folders")
    return train


# --------------------------------------------------------------------------- synthetic

_SYNTHETIC_SEED = 20250213
_SYNTHETIC_PER_CLASS = {"train": 200, "test": 50}
# Superclass colours (RGB offsets) and stripe orientations; class blob centres (row, col).
_GROUP_TINT = torch.tensor([[0.28, -0.10, -0.10], [-0.10, 0.28, -0.10], [-0.10, -0.10, 0.28]])
_GROUP_ANGLE = torch.tensor([0.0, math.pi / 3, 2 * math.pi / 3])
_CLASS_CENTRE = torch.tensor([[8.0, 8.0], [8.0, 24.0], [24.0, 16.0]] * 3)


def _synthetic(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The planted-hierarchy dataset (reconstruction, for fast tests of the whole pipeline).

    9 classes in 3 superclasses (class c is in group c // 3), 3x32x32 uint8 images on a grey
    (0.5) background, built from
    - the superclass's coarse pattern: a colour tint (+0.28 on the group's own channel,
      -0.10 on the others, amplitude jittered 0.8-1.2 per image) and a sinusoidal stripe
      texture of period 8 px at the group's orientation (0, 60 or 120 degrees) with a random
      phase, amplitude 0.12;
    - the class's finer pattern: a bright Gaussian blob (sigma 3 px, amplitude 0.25, white)
      centred at one of three positions within the group, jittered by up to 2 px;
    - i.i.d. Gaussian pixel noise (sigma 0.08), then clipped to [0, 1] and quantised.
    The tint dominates the class means, so class-mean images (and the class-mean embeddings
    of a net trained on them) cluster by superclass; blobs separate classes within a group.
    Deterministic: the train and test splits come from fixed generator seeds.
    """
    n = _SYNTHETIC_PER_CLASS[split]
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED + (split == "test"))
    labels = torch.arange(9).repeat_interleave(n)
    group = labels // 3
    m = len(labels)
    coords = torch.arange(32, dtype=torch.float32)
    rows, cols = coords.view(1, 32, 1), coords.view(1, 1, 32)
    tint = _GROUP_TINT[group] * (0.8 + 0.4 * torch.rand(m, 1, generator=g))
    angle, phase = _GROUP_ANGLE[group].view(m, 1, 1), 2 * math.pi * torch.rand(m, 1, 1, generator=g)
    stripes = 0.12 * torch.sin(2 * math.pi / 8 * (rows * torch.sin(angle) + cols * torch.cos(angle)) + phase)
    centre = _CLASS_CENTRE[labels] + (torch.rand(m, 2, generator=g) * 4 - 2)
    blob = 0.25 * torch.exp(-((rows - centre[:, 0].view(m, 1, 1)) ** 2 + (cols - centre[:, 1].view(m, 1, 1)) ** 2)
                            / (2 * 3.0 ** 2))
    x = 0.5 + tint.view(m, 3, 1, 1) + (stripes + blob).unsqueeze(1) + 0.08 * torch.randn(m, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


@functools.lru_cache(maxsize=1)
def _synthetic_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = _synthetic("train")[0].double() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3), unbiased=False).tolist())


# --------------------------------------------------------------------------- public API

def dataset_info(name: str, root=None) -> DatasetInfo:
    """Classes, taxonomy, input shape and normalisation of a dataset.

    CIFAR and ImageNet read their class names from the data (so the data must be present);
    Fashion-MNIST and synthetic need nothing on disk.
    """
    _check_name(name)
    if name == "fashion-mnist":
        return DatasetInfo(name, 10, 1, 32, list(FASHION_MNIST_CLASSES),
                           {k: list(v) for k, v in FASHION_MNIST_TAXONOMY.items()},
                           FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    if name == "synthetic":
        mean, std = _synthetic_stats()
        return DatasetInfo(name, 9, 3, 32, [f"class{c}" for c in range(9)],
                           {f"group{g}": [3 * g, 3 * g + 1, 3 * g + 2] for g in range(3)}, mean, std)
    if name == "imagenet":
        classes = _imagenet_classes(_imagenet_dir(root))
        return DatasetInfo(name, len(classes), 3, 224, classes, {}, IMAGENET_MEAN, IMAGENET_STD)
    folder = _cifar_dir(name, root)
    meta_path = folder / _CIFAR_FILES[name]["meta"]
    meta = _unpickle(meta_path, name)
    if name == "cifar10":
        return DatasetInfo(name, 10, 3, 32, _names(meta, "label_names", 10, meta_path, name), {},
                           CIFAR10_MEAN, CIFAR10_STD)
    train = folder / "train"
    taxonomy = _cifar100_taxonomy(folder, train.stat().st_mtime if train.is_file() else 0.0)
    return DatasetInfo(name, 100, 3, 32, _names(meta, "fine_label_names", 100, meta_path, name),
                       {k: list(v) for k, v in taxonomy.items()},
                       CIFAR100_MEAN, CIFAR100_STD)


def load_tensors(name: str, split: str = "train", root=None, download: bool = False):
    """``(images uint8 [N, C, H, W], labels int64 [N])`` on the CPU, for every dataset but imagenet."""
    _check_name(name)
    _check_split(split)
    if download and name not in ("fashion-mnist", "cifar10", "cifar100"):
        raise PaperpruneError(f"download=True is only available for fashion-mnist, cifar10 and cifar100, not {name!r}")
    if name == "imagenet":
        raise PaperpruneError("imagenet is streamed from its ImageFolder tree, not loaded into memory; "
                              "use make_loaders('imagenet', root=...)")
    if name == "fashion-mnist":
        return _load_fashion(split, root, download)
    if name == "synthetic":
        return _synthetic(split)
    return _load_cifar(name, split, root, download)


def class_balanced_batch(images: torch.Tensor, labels: torch.Tensor, samples_per_class: int, seed: int = 0, *,
                         setting: str | None = None):
    """The first ``samples_per_class`` images of each class after a seeded shuffle, grouped by class.

    Classes with fewer images keep all they have, unless ``setting`` names the user's setting
    (``"per_class"``, ``"samples_per_class"``): then asking for more images than the smallest
    class holds is an error naming it, not a silent "all". Deterministic for a given seed.
    """
    name = setting or "samples_per_class"
    count = as_number(samples_per_class, name, int)
    if count < 1:
        raise PaperpruneError(f"{name}={samples_per_class!r} must be >= 1 (images per class)")
    if setting is not None and len(labels):
        per_class = torch.bincount(labels.cpu())
        smallest = int(per_class[per_class > 0].min())
        if count > smallest:
            small = int(torch.nonzero(per_class == smallest)[0])
            raise PaperpruneError(f"{setting}={count} exceeds the {smallest} images of the smallest class "
                                  f"(class {small}) in this split; pass at most {smallest}")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(labels.device)
    shuffled = labels[perm]
    order = torch.sort(shuffled, stable=True).indices
    sorted_labels = shuffled[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = torch.arange(len(labels), device=labels.device) - first
    keep = perm[order[rank_in_class < count]]
    return images[keep.to(images.device)], labels[keep]


_SAMPLE = 1 << 16


def _file_fingerprint(path: Path, digest) -> None:
    """Name, size, mtime and three 64 KiB samples (start, middle, end) of a file: cheap, and it
    changes when the file is replaced, edited in place, or a copy of other data stands there."""
    stat = path.stat()
    digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, stat.st_size // 2 - _SAMPLE // 2), max(0, stat.st_size - _SAMPLE)}):
            f.seek(offset)
            digest.update(f.read(_SAMPLE))


def data_identity(name: str, root=None) -> dict:
    """``{"root": resolved folder read, "fingerprint": hex}``: what a cache of anything trained or
    evaluated on this dataset must be keyed by. The fingerprint covers every file the readers
    open (for ImageNet: each class folder's name, file count and mtime), so another copy of the
    data, or the same folder with changed files, gets another identity."""
    import hashlib

    _check_name(name)
    digest = hashlib.sha256()
    if name == "synthetic":
        digest.update(f"synthetic {_SYNTHETIC_SEED} {_SYNTHETIC_PER_CLASS}".encode())
        return {"root": "(generated in memory)", "fingerprint": digest.hexdigest()[:16]}
    if name == "imagenet":
        folder = _imagenet_dir(root).resolve()
        for split in ("train", "val"):
            for entry in sorted(os.scandir(folder / split), key=lambda e: e.name):
                if entry.is_dir():
                    count = sum(1 for _ in os.scandir(entry.path))
                    digest.update(f"{split}/{entry.name}\0{count}\0{entry.stat().st_mtime_ns}\0".encode())
        return {"root": str(folder), "fingerprint": digest.hexdigest()[:16]}
    if name == "fashion-mnist":
        folder = _fashion_dir(root).resolve()
        files = [_idx_file(folder, stem) for pair in _FASHION_FILES.values() for stem in pair]
    else:
        folder = _cifar_dir(name, root).resolve()
        spec = _CIFAR_FILES[name]
        files = [folder / f for f in (*spec["train"], *spec["test"], spec["meta"])]
    for path in files:
        if path is None or not path.is_file():
            raise DataNotFoundError(f"{name}: {folder} lacks some of its files "
                                    f"({', '.join(str(p.name) for p in files if p is not None and not p.is_file())}"
                                    f"{'' if None not in files else ' and an IDX file'}); replace the folder with a "
                                    "complete copy")
        _file_fingerprint(path, digest)
    return {"root": str(folder), "fingerprint": digest.hexdigest()[:16]}


@functools.lru_cache(maxsize=16)
def _class_counts(name: str, split: str, root, fingerprint: str) -> tuple[int, ...]:
    if name == "imagenet":
        from torchvision.datasets.folder import IMG_EXTENSIONS
        folder = _imagenet_dir(root) / ("train" if split == "train" else "val")
        classes = _imagenet_classes(_imagenet_dir(root))
        return tuple(sum(1 for e in os.scandir(folder / c) if e.name.lower().endswith(IMG_EXTENSIONS))
                     for c in classes)
    labels = load_tensors(name, split, root)[1]
    return tuple(torch.bincount(labels, minlength=dataset_info(name, root).num_classes).tolist())


def class_counts(name: str, split: str = "train", root=None, *, fingerprint: str | None = None) -> tuple[int, ...]:
    """Images per class of a split (cached per data identity; pass `fingerprint` when it is known)."""
    _check_split(split)
    fingerprint = fingerprint or data_identity(name, root)["fingerprint"]
    return _class_counts(name, split, None if root is None else str(root), fingerprint)


def _check_loader_args(batch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise PaperpruneError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise PaperpruneError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Batched random crop with zero padding and horizontal flip: one indexing op for the whole batch.

    ``x`` [B, C, H, W]; ``offsets`` [B, 2] (row, col) in ``[0, 2*padding]`` is the crop's corner in
    the padded image; ``flips`` [B] bool mirrors the crop. Offset (padding, padding) without
    flip is the identity.
    """
    b, c, h, w = x.shape
    padded = x.new_zeros(b, c, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding:padding + h, padding:padding + w] = x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, :1] + ar_h
    cols = offsets[:, 1:] + torch.where(flips.view(b, 1), w - 1 - ar_w, ar_w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, :, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2).contiguous()


class DeviceLoader:
    """Device-resident mini-batches from uint8 tensors (CIFAR/Fashion-MNIST/synthetic).

    Each epoch (``set_epoch``) draws, from a CPU generator seeded with ``seed + epoch``, one
    permutation and per-position crop offsets and flips for the whole dataset; every rank draws
    the same and takes its shard. Train: shuffled, DDP-style equal shards
    ``perm[rank:N - N % world_size:world_size]`` (remainder dropped), pad-4 random crop + flip
    (:func:`crop_flip`). Test: no shuffle or augmentation, shards ``rank::world_size``, which are
    disjoint and cover every sample exactly once. ``drop_last`` (default: train) drops a partial
    last batch, but never the whole epoch: a shard smaller than ``batch_size`` is one batch.
    Yields ``(float images normalised with mean/std, int64 labels)`` on ``device``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, mean, std,
                 train: bool, device="cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, padding: int = 4):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise PaperpruneError(f"DeviceLoader needs uint8 images [N, C, H, W] and N labels, got "
                                  f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}")
        _check_loader_args(batch_size, rank, world_size)
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise PaperpruneError(f"mean/std have {len(mean)}/{len(std)} entries for {images.shape[1]} channels")
        self.device = resolve_device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.padding = rank, world_size, padding
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) / std_t

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        n = len(self.labels)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples
        if n == 0:
            return 0
        return max(1, n // self.batch_size) if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images on this loader's device -> normalised float32."""
        return x.float() * self._scale - self._shift

    def _plan(self):
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size), None, None
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool()
        pos = torch.arange(self.rank, n - n % self.world_size, self.world_size)
        return perm[pos], offsets[pos], flips[pos]

    def __iter__(self):
        idx, offsets, flips = self._plan()
        idx = idx.to(self.device)
        if offsets is not None:
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        nb = len(self)
        bounds = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(nb)]
        if self.drop_last and nb == 1 and self.num_samples < self.batch_size:
            bounds = [(0, self.num_samples)]
        for lo, hi in bounds:
            x = self.images[idx[lo:hi]]
            if offsets is not None:
                x = crop_flip(x, offsets[lo:hi], flips[lo:hi], self.padding)
            yield self.normalize(x), self.labels[idx[lo:hi]]


class _StridedSampler(torch.utils.data.Sampler):
    """Evaluation shard ``rank::world_size``: disjoint, covering, no padded duplicates."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class FolderLoader:
    """ImageNet batches from torchvision's ImageFolder + DataLoader, moved to ``device``.

    Train: RandomResizedCrop(224) + horizontal flip, shuffled with ``seed + epoch`` (a
    DistributedSampler with ``drop_last`` when ``world_size > 1``), partial last batch dropped
    unless it is the only one. Val: Resize(256) + CenterCrop(224), in order, shard
    ``rank::world_size``.
    """

    def __init__(self, dataset, *, batch_size: int, train: bool, device, seed: int, num_workers: int,
                 rank: int, world_size: int):
        from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
        _check_loader_args(batch_size, rank, world_size)
        self.dataset, self.train, self.seed, self.rank = dataset, train, seed, rank
        self.device = resolve_device(device)
        self.generator = torch.Generator()
        if not train:
            sampler = _StridedSampler(len(dataset), rank, world_size)
        elif world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                         drop_last=True)
        else:
            sampler = RandomSampler(dataset, generator=self.generator)
        self.sampler = sampler
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda",
                                 drop_last=train and len(sampler) >= batch_size, generator=self.generator)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch + 1_000_003 * self.rank)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        nb = self.device.type == "cuda"
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)


def _imagenet_loaders(root, batch_size, device, seed, per_class, num_workers, rank, world_size):
    folder = _imagenet_dir(root)
    info = dataset_info("imagenet", folder)
    from torch.utils.data import Subset
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 normalize])
    try:
        train_set = ImageFolder(str(folder / "train"), transform=train_tf)
        val_set = ImageFolder(str(folder / "val"), transform=val_tf)
    except FileNotFoundError as e:
        raise DataNotFoundError(f"imagenet: {e}. To provide it: {_IMAGENET_HOW}") from e
    if per_class is not None:
        targets = torch.as_tensor(train_set.targets)
        kept, _ = class_balanced_batch(torch.arange(len(targets)), targets, per_class, seed, setting="per_class")
        train_set = Subset(train_set, kept.tolist())
    common = dict(batch_size=batch_size, device=device, seed=seed, num_workers=num_workers, rank=rank,
                  world_size=world_size)
    return FolderLoader(train_set, train=True, **common), FolderLoader(val_set, train=False, **common), info


def make_loaders(name: str, *, root=None, batch_size: int = 128, device="cpu", seed: int = 0,
                 per_class: int | None = None, num_workers: int = 4, rank: int = 0, world_size: int = 1,
                 download: bool = False):
    """``(train_loader, test_loader, info)`` for a dataset.

    ``per_class`` keeps a class-balanced, seed-determined subset of that many training
    images per class (:func:`class_balanced_batch`). Tensor datasets use :class:`DeviceLoader`
    (``num_workers`` is unused there); imagenet uses :class:`FolderLoader`.
    """
    _check_name(name)
    if name == "imagenet":
        if download:
            raise PaperpruneError("download=True is not available for imagenet; " + _IMAGENET_HOW)
        return _imagenet_loaders(root, batch_size, device, seed, per_class, num_workers, rank, world_size)
    train_x, train_y = load_tensors(name, "train", root, download)
    test_x, test_y = load_tensors(name, "test", root, download)
    info = dataset_info(name, root)
    if per_class is not None:
        train_x, train_y = class_balanced_batch(train_x, train_y, per_class, seed, setting="per_class")
    common = dict(batch_size=batch_size, mean=info.mean, std=info.std, device=device, seed=seed, rank=rank,
                  world_size=world_size)
    return DeviceLoader(train_x, train_y, train=True, **common), DeviceLoader(test_x, test_y, train=False,
                                                                              **common), info


def imagenet_calibration_loader(root, *, samples_per_class: int, batch_size: int = 64, device="cpu",
                                seed: int = 0, num_workers: int = 4) -> FolderLoader:
    """Training images under the validation transform, ``samples_per_class`` per class (seeded).

    The calibration set of the pruning statistics is drawn from training data without
    augmentation, as it is for the tensor datasets.
    """
    from torch.utils.data import Subset
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    folder = _imagenet_dir(root)
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        train_set = ImageFolder(str(folder / "train"), transform=val_tf)
    except FileNotFoundError as e:
        raise DataNotFoundError(f"imagenet: {e}. To provide it: {_IMAGENET_HOW}") from e
    targets = torch.tensor(train_set.targets)
    kept, _ = class_balanced_batch(torch.arange(len(targets)), targets, samples_per_class, seed,
                                   setting="samples_per_class")
    return FolderLoader(Subset(train_set, kept.tolist()), batch_size=batch_size, train=False, device=device,
                        seed=seed, num_workers=num_workers, rank=0, world_size=1)
