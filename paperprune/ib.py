"""Information-bottleneck statistics of a layer: redundancy Q and class-wise relevance R.

METHOD.md section 2. For a prunable layer with C candidate channels and a calibration set
of N samples with labels y_i in {0..K-1}:

- channel kernels   K^(k)_ij = exp(-||x_i^(k) - x_j^(k)||^2 / (2 s_k^2))       (Gaussian Gram)
- centre/normalise  Kbar^(k) = H K^(k) H / ||H K^(k) H||_F,   H = I - 11^T/N
- class kernels     L^(c)_ij = 1[y_i=c] 1[y_j=c]  (one-vs-rest), Lbar^(c) likewise
- redundancy        Q_km = <Kbar^(k), Kbar^(m)>_F                               (C, C)
- relevance         R_kc = <Kbar^(k), Lbar^(c)>_F                               (C, K)
- output relevance  <Kbar^(k), Kbar^(out)>_F with a Gaussian kernel of one response: the
                    model's logits, or the output of the layer that consumes the
                    channels (the class-agnostic response of APIB)              (C,)

so that the multi-task HSIC regression f(B) = 1/2 tr(B^T Q B) - tr(R^T B) + const.

What is from the paper: only its abstract, which says the structured lassos are "guided by
Information Bottleneck theory" and use "class-wise" information. Everything in this module
is reconstruction from the lineage (APIB, Guo et al. ICCV 2023; HSIC Lasso, Yamada et al.
2014): the Gaussian kernels, the bandwidth rule, the one-vs-rest class kernels and the
normalisation. Choices made here, not taken from any paper:

- Bandwidth: median heuristic, s_k^2 = median of the non-zero squared pairwise distances
  of channel k (torch.median: the lower middle value for an even count); the response kernel
  uses the same rule. APIB uses the fixed gamma = 1/HW instead. The median
  is estimated on at most `MEDIAN_SAMPLES` samples, evenly spaced over the calibration order (a stratified
  subset when the calibration set is sorted by class). Zero distances are left out because
  a ReLU channel that is silent on most samples would otherwise get s_k = 0; when the
  subset has no non-zero distance, s_k^2 is the mean squared distance over all N samples.
  "Zero" is exact: ||a||^2 + ||b||^2 - 2 a.b leaves rounding residue on identical maps (the
  silent ones above all), so pairs whose maps are identical, recognised by equal squared norms
  and equal projections on a fixed random direction, count as zero whatever the rounding
  (METHOD.md section 2, "Statistics").
- Dead channels: a channel whose feature maps are identical on every sample (relative
  spread below 100 machine epsilons of the features' dtype), or whose centred kernel has
  a Frobenius norm at rounding level, gets Kbar = 0: its rows of Q and R are zero and it is
  reported in `dead`.
- A class with no calibration sample (or holding every sample) has Lbar = 0 and a zero
  column of R; absent classes are reported in `missing_classes`.

Memory and cost (see `feature_statistics`): the C kernels of size N x N are never
materialised. They are evaluated in row tiles over the upper triangle (the kernels are
symmetric) in two passes: pass 1 accumulates each kernel's row means (hence the grand
mean, the centring), pass 2 centres the tiles and accumulates the Frobenius inner products
(the Gram of the centred kernels, whose diagonal gives the norms ||H K H||_F; the
class-block sums for R; the output cross terms) in float64 accumulators.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .utils import PaperpruneError, resolve_device

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_MAX_BYTES",
    "MEDIAN_SAMPLES",
    "PERMUTATIONS",
    "STATISTICS",
    "LayerStatistics",
    "Statistics",
    "block_batch_size",
    "block_partitions",
    "channel_features",
    "check_block_samples",
    "check_statistics",
    "channel_kernels",
    "class_embeddings",
    "feature_statistics",
    "hsic",
    "layer_statistics",
    "normalized_hsic",
]

MEDIAN_SAMPLES = 1000
"""At most this many samples (evenly spaced) estimate each channel's median bandwidth."""

DEFAULT_MAX_BYTES = 1 << 30
"""Default memory budget (1 GiB) of one kernel tile, see `feature_statistics`."""

_TILE_COPIES = 2   # a kernel tile plus at most one temporary of the same size
_EXTRA_ROWS = 3    # the output-kernel tile, the class mask and their stack, per row


@dataclass
class LayerStatistics:
    """The statistics of one prunable layer: redundancy Q, class-wise relevance R, output relevance.

    Parameters
    ----------
    name : str
        The layer's name.
    redundancy : torch.Tensor, shape (C, C)
        Q_km = <Kbar^(k), Kbar^(m)>_F: symmetric, positive semi-definite, unit diagonal except for
        dead channels (zero rows and columns).
    relevance : torch.Tensor, shape (C, K)
        R_kc = <Kbar^(k), Lbar^(c)>_F, the normalised HSIC between channel k and class c (zero
        columns for `missing_classes`).
    output_relevance : torch.Tensor, shape (C,)
        Normalised HSIC between each channel and one response kernel (the logits, or the consuming
        layer's output); zeros when no response was given.
    dead : torch.Tensor of bool, shape (C,)
        Channels with Kbar = 0: constant maps, or a centred kernel at rounding level.
    missing_classes : list of int
        Classes without calibration samples.
    num_samples : int
        N, the calibration samples the statistics come from.

    Notes
    -----
    METHOD.md section 2, "Statistics" (the exact estimator) and section 2b (the block estimator,
    which gives the same fields). The lasso criteria solve f(B) = 1/2 tr(B^T Q B) - tr(R^T B)
    over B (C, K) (section 2, "Objective").

    Examples
    --------
    >>> import torch
    >>> from paperprune.ib import feature_statistics
    >>> _ = torch.manual_seed(0)
    >>> stats = feature_statistics(torch.randn(12, 5, 3, 3), torch.arange(12) % 3, 4, name="demo")
    >>> stats.name, stats.num_samples, stats.missing_classes
    ('demo', 12, [3])
    >>> tuple(stats.redundancy.shape), tuple(stats.relevance.shape), tuple(stats.dead.shape)
    ((5, 5), (5, 4), (5,))
    """

    name: str
    redundancy: Tensor
    relevance: Tensor
    output_relevance: Tensor
    dead: Tensor
    missing_classes: list[int]
    num_samples: int


class Statistics(dict):
    """`layer_statistics`' result: {layer name: LayerStatistics}, and `class_embeddings`, the (K, D) class
    means of the classifier's input gathered in the same forward pass (None when no classifier was named)."""

    def __init__(self, layers: dict[str, LayerStatistics], *, class_embeddings: Tensor | None = None):
        super().__init__(layers)
        self.class_embeddings = class_embeddings


# --------------------------------------------------------------------------- kernels


def _row_tiles(n: int, channels: int, itemsize: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """Row ranges [r0, r1) of the upper triangle: tile (channels, r1-r0, n-r0) fits max_bytes."""
    budget = max(1, int(max_bytes) // (_TILE_COPIES * itemsize * (channels + _EXTRA_ROWS)))
    r0 = 0
    while r0 < n:
        width = n - r0
        r1 = r0 + min(width, max(1, budget // width))
        yield r0, r1
        r0 = r1


class _GaussianKernels:
    """C Gaussian Gram matrices over the same N samples, evaluated in row tiles.

    `x` is (C, N, D) and is centred in place (pairwise distances are shift invariant;
    centring reduces cancellation in ||a||^2 + ||b||^2 - 2 a.b). `source_eps` is the machine
    epsilon of the dtype the features were produced in, for the dead-channel test.
    """

    def __init__(self, x: Tensor, *, source_eps: float, max_bytes: int, scale: Tensor | None = None):
        self.channels, self.n, _ = x.shape
        self.dtype = x.dtype
        energy = torch.linalg.vector_norm(x, dim=(1, 2)).square()
        x.sub_(x.mean(dim=1, keepdim=True))
        self.sq = torch.linalg.vector_norm(x, dim=2).square()  # (C, N) ||x_i - xbar||^2
        spread = self.sq.sum(dim=1)                           # (C,)
        self.constant = spread <= (100.0 * source_eps) ** 2 * energy
        x[self.constant] = 0.0
        self.sq[self.constant] = 0.0
        self.x = x
        if scale is None:
            self.scale = -0.5 / self._bandwidth_sq(spread, max_bytes)   # -1 / (2 s_k^2)
        else:  # fixed bandwidths (block statistics); NaN entries are set here unless the channel is constant
            self.scale = scale.to(dtype=self.dtype, copy=True)
            todo = torch.isnan(self.scale) & ~self.constant
            if todo.any():
                self.scale[todo] = -0.5 / self._bandwidth_sq(spread, max_bytes, todo)
        self.row_mean: Tensor | None = None
        self.grand_mean: Tensor | None = None

    def _bandwidth_sq(self, spread: Tensor, max_bytes: int, channels: Tensor | None = None) -> Tensor:
        """s_k^2 of the `channels` (a mask; default all): median of the non-zero squared distances on
        an evenly spaced subset; pairs of identical maps (equal squared norm and equal projection on a
        fixed random direction, computed row by row, so identical rows give identical keys) count as
        zero exactly."""
        x, sq_all = (self.x, self.sq) if channels is None else (self.x[channels], self.sq[channels])
        count = x.shape[0]
        m = min(self.n, MEDIAN_SAMPLES)
        idx = torch.linspace(0, self.n - 1, m, device=x.device).round().long()
        iu, ju = torch.triu_indices(m, m, offset=1, device=x.device)
        med = torch.empty(count, dtype=self.dtype, device=x.device)
        probe = torch.randn(x.shape[2], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        probe = probe.to(device=x.device, dtype=self.dtype)
        step = max(1, int(max_bytes) // (2 * m * max(m, x.shape[2]) * x.element_size()))
        for c0 in range(0, count, step):
            xs, sq = x[c0:c0 + step, idx], sq_all[c0:c0 + step, idx]
            key = (xs * probe).sum(dim=2)
            d = torch.bmm(xs, xs.transpose(1, 2)).mul_(-2).add_(sq[:, :, None]).add_(sq[:, None, :])
            pairs = d[:, iu, ju].clamp_min_(0)
            same = (sq[:, iu] == sq[:, ju]) & (key[:, iu] == key[:, ju])
            pairs[same | (pairs == 0)] = math.nan
            med[c0:c0 + step] = pairs.nanmedian(dim=1).values if pairs.shape[1] else math.nan
        constant = self.constant if channels is None else self.constant[channels]
        spread = spread if channels is None else spread[channels]
        fallback = 2.0 * spread / max(self.n - 1, 1)
        s2 = torch.where(torch.isnan(med) | (med <= 0), fallback, med)
        return torch.where(constant | (s2 <= 0), torch.ones_like(s2), s2)

    def tile(self, r0: int, r1: int) -> Tensor:
        """K[:, r0:r1, r0:] as a fresh (C, r1-r0, N-r0) tensor."""
        t = torch.bmm(self.x[:, r0:r1], self.x[:, r0:].transpose(1, 2))
        t.mul_(-2).add_(self.sq[:, r0:r1, None]).add_(self.sq[:, None, r0:]).clamp_min_(0)
        return t.mul_(self.scale[:, None, None]).exp_()

    def prepare(self, tiles: Sequence[tuple[int, int]]) -> None:
        """Pass 1: row means (= column means, K is symmetric) and grand means."""
        if self.row_mean is not None:
            return
        sums = torch.zeros(self.channels, self.n, dtype=torch.float64, device=self.x.device)
        for r0, r1 in tiles:
            t = self.tile(r0, r1)
            sums[:, r0:r1] += t.sum(dim=2)
            sums[:, r1:] += t[:, :, r1 - r0:].sum(dim=1)
        mean = sums / self.n
        self.row_mean = mean.to(self.dtype)
        self.grand_mean = mean.mean(dim=1).to(self.dtype)

    def centred_tile(self, r0: int, r1: int) -> Tensor:
        """(H K H)[:, r0:r1, r0:] = K_ij - m_i - m_j + g (after `prepare`)."""
        t = self.tile(r0, r1)
        t.sub_(self.row_mean[:, r0:r1, None]).sub_(self.row_mean[:, None, r0:])
        return t.add_(self.grand_mean[:, None, None])


def _inner_products(kern: _GaussianKernels, labels: Tensor | None, num_classes: int,
                    out: _GaussianKernels | None, max_bytes: int) -> dict[str, Tensor]:
    """Pass 2: Frobenius inner products of the centred kernels, float64.

    gram (C, C) = <HK^(k)H, HK^(m)H>; class_sums (C, K) = 1_c^T HK^(k)H 1_c
    = <HK^(k)H, L^(c)>; out_cross (C,) = <HK^(k)H, HK^(out)H>; out_norm2 = ||HK^(out)H||^2.
    Off-diagonal tile columns stand for two entries (i, j) and (j, i): weight 2.
    """
    c, n, dev = kern.channels, kern.n, kern.x.device
    tiles = list(_row_tiles(n, c, kern.x.element_size(), max_bytes))
    kern.prepare(tiles)
    if out is not None:
        out.prepare(tiles)
    f64 = dict(dtype=torch.float64, device=dev)
    gram = torch.zeros(c, c, **f64)
    class_sums = torch.zeros(num_classes, c, **f64)
    out_cross = torch.zeros(c, **f64)
    out_norm2 = torch.zeros((), **f64)
    for r0, r1 in tiles:
        b = r1 - r0
        t = kern.centred_tile(r0, r1)                                    # (C, b, W)
        weight = torch.full((n - r0,), 2.0, dtype=kern.dtype, device=dev)
        weight[:b] = 1.0
        columns = []
        if labels is not None:
            columns.append((labels[r0:r1, None] == labels[None, r0:]).to(kern.dtype) * weight)
        if out is not None:
            o = out.centred_tile(r0, r1)[0]                              # (b, W)
            out_norm2 += (o.square() * weight).sum().double()
            columns.append(o * weight)
        if columns:
            cross = torch.bmm(t.transpose(0, 1), torch.stack(columns, dim=2)).double()  # (b, C, P)
            if labels is not None:
                onehot = nn.functional.one_hot(labels[r0:r1], num_classes).double()   # (b, K)
                class_sums.addmm_(onehot.T, cross[:, :, 0])
            if out is not None:
                out_cross += cross[:, :, -1].sum(dim=0)
        t[:, :, b:] *= math.sqrt(2.0)
        flat = t.reshape(c, -1)
        gram += (flat @ flat.T).double()
    return {"gram": gram, "class_sums": class_sums.T, "out_cross": out_cross, "out_norm2": out_norm2}


def _as_stack(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, D...) samples -> a fresh (1, N, D) float stack."""
    return x.reshape(1, x.shape[0], -1).to(dtype=dtype, copy=True)


def _float_dtype(x: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return x.dtype if x.is_floating_point() else torch.float32


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps


def hsic(x: Tensor, y: Tensor, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """Biased HSIC estimate tr(K H L H) / (N - 1)^2 between two samples (Gretton et al., 2005).

    Parameters
    ----------
    x : torch.Tensor, shape (N, ...)
        One sample per row; trailing axes are flattened.
    y : torch.Tensor, shape (N, ...)
        The paired samples.
    max_bytes : int, default DEFAULT_MAX_BYTES
        Memory budget of one kernel tile.

    Returns
    -------
    torch.Tensor, shape ()
        The estimate, in x's float dtype (float32 for integer input).

    See Also
    --------
    normalized_hsic : The same statistic, normalised to [0, 1].

    Notes
    -----
    Gaussian kernels K of x and L of y with the median bandwidth of METHOD.md section 2,
    "Statistics" (exact zero distances left out); H = I - 11^T/N. One-hot labels as y give a
    kernel that, once centred, is proportional to the centred delta kernel 1[y_i = y_j] =
    sum_c L^(c)_ij. Same tiled code as `feature_statistics`.

    Examples
    --------
    >>> import torch
    >>> from paperprune.ib import hsic
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(50, 3, dtype=torch.float64)
    >>> y = x.square() + 0.1 * torch.randn(50, 3, dtype=torch.float64)
    >>> z = torch.randn(50, 3, dtype=torch.float64)
    >>> hsic(x, y).shape
    torch.Size([])
    >>> bool(hsic(x, y) > 2 * hsic(x, z))
    True
    """
    n = x.shape[0]
    dt = _float_dtype(x, None)
    kx = _GaussianKernels(_as_stack(x, dt), source_eps=_eps(x.dtype), max_bytes=max_bytes)
    ky = _GaussianKernels(_as_stack(y, dt), source_eps=_eps(y.dtype), max_bytes=max_bytes)
    ip = _inner_products(kx, None, 0, ky, max_bytes)
    return (ip["out_cross"][0] / max(n - 1, 1) ** 2).to(dt)


def normalized_hsic(x: Tensor, y: Tensor, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """Normalised HSIC <Kbar_x, Kbar_y>_F in [0, 1] between two samples; 0 when either is constant.

    Parameters
    ----------
    x : torch.Tensor, shape (N, ...)
        One sample per row; trailing axes are flattened.
    y : torch.Tensor, shape (N, ...)
        The paired samples.
    max_bytes : int, default DEFAULT_MAX_BYTES
        Memory budget of one kernel tile.

    Returns
    -------
    torch.Tensor, shape ()
        The normalised HSIC, in x's float dtype.

    See Also
    --------
    hsic : The unnormalised estimate.
    channel_kernels : The normalised kernels Kbar themselves, for small N.

    Notes
    -----
    Kbar = H K H / ||H K H||_F with the Gaussian kernel and median bandwidth of METHOD.md
    section 2, "Statistics": the quantity Q and R are made of. Same tiled code as
    `feature_statistics`.

    Examples
    --------
    >>> import torch
    >>> from paperprune.ib import channel_kernels, normalized_hsic
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(50, 3, dtype=torch.float64)
    >>> y = x.square() + 0.1 * torch.randn(50, 3, dtype=torch.float64)
    >>> round(float(normalized_hsic(x, x)), 6), float(normalized_hsic(x, torch.zeros(50, 2)))
    (1.0, 0.0)
    >>> kx, ky = channel_kernels(x[:, None]), channel_kernels(y[:, None])
    >>> torch.allclose(normalized_hsic(x, y), (kx[0] * ky[0]).sum())
    True
    """
    features = x.reshape(x.shape[0], 1, -1)
    stats = feature_statistics(features, None, 0, outputs=y.reshape(y.shape[0], -1),
                               max_bytes=max_bytes, dtype=_float_dtype(x, None))
    return stats.output_relevance[0]


# --------------------------------------------------------------------------- statistics


def _check_labels(labels: Tensor, n: int, num_classes: int) -> Tensor:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise PaperpruneError(
            f"labels must be a 1-D tensor with one label per sample ({n}); got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise PaperpruneError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PaperpruneError(
            f"labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}); "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def _dead_tolerance(n: int, dtype: torch.dtype) -> float:
    """Rounding level of ||H K H||_F: N^2 entries of magnitude <= 1."""
    return 10.0 * torch.finfo(dtype).eps * n


def _inverse_norms(norm2: Tensor, constant: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(dead, 1/||H K H||_F with 0 for dead channels) from the squared norms; `dtype` is
    the one the kernels were computed in."""
    norm = norm2.double().clamp_min(0).sqrt()
    dead = constant | (norm <= _dead_tolerance(n, dtype))
    return dead, torch.where(dead, torch.zeros_like(norm), 1.0 / torch.where(dead, torch.ones_like(norm), norm))


def channel_kernels(features: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Materialised Kbar^(k) = H K^(k) H / ||H K^(k) H||_F, (C, N, N), from features
    (N, C, ...): the direct form of METHOD.md section 2, for small N (tutorials, tests).
    Dead channels give zero matrices. `feature_statistics` never builds this stack."""
    n, c = features.shape[:2]
    dt = _float_dtype(features, dtype)
    x = features.reshape(n, c, -1).transpose(0, 1).to(dtype=dt, copy=True).contiguous()
    kern = _GaussianKernels(x, source_eps=_eps(features.dtype), max_bytes=DEFAULT_MAX_BYTES)
    kern.prepare([(0, n)])
    centred = kern.centred_tile(0, n)
    _, inv = _inverse_norms(centred.square().sum(dim=(1, 2)), kern.constant, n, dt)
    return centred * inv.to(dt)[:, None, None]


def _statistics(name: str, x: Tensor, labels: Tensor | None, num_classes: int,
                out: _GaussianKernels | None, *, source_eps: float, max_bytes: int) -> LayerStatistics:
    """Statistics of one layer from its (C, N, D) features, which are consumed (centred);
    results in the features' dtype, on their device."""
    c, n, _ = x.shape
    dtype = x.dtype
    kern = _GaussianKernels(x, source_eps=source_eps, max_bytes=max_bytes)
    if labels is not None:
        labels = labels.to(x.device)
    ip = _inner_products(kern, labels, num_classes, out, max_bytes)
    dead, inv = _inverse_norms(ip["gram"].diagonal(), kern.constant, n, kern.dtype)
    redundancy = ip["gram"] * inv[:, None] * inv[None, :]
    if labels is not None:
        counts = torch.bincount(labels, minlength=num_classes).double()
        label_norm = counts * (n - counts) / max(n, 1)     # ||H L^(c) H||_F = n_c (N - n_c) / N
        inv_label = torch.where(label_norm > 0, 1.0 / label_norm.clamp_min(1e-300), torch.zeros_like(label_norm))
        relevance = ip["class_sums"] * inv[:, None] * inv_label[None, :]
        missing = torch.nonzero(counts == 0).flatten().tolist()
    else:
        relevance = torch.zeros(c, num_classes, dtype=torch.float64, device=x.device)
        missing = list(range(num_classes))
    out_norm = ip["out_norm2"].clamp_min(0).sqrt()
    if out is not None and out_norm > _dead_tolerance(n, kern.dtype):
        output_relevance = ip["out_cross"] * inv / out_norm
    else:
        output_relevance = torch.zeros(c, dtype=torch.float64, device=x.device)
    return LayerStatistics(
        name=name,
        redundancy=redundancy.to(dtype),
        relevance=relevance.to(dtype),
        output_relevance=output_relevance.to(dtype),
        dead=dead,
        missing_classes=missing,
        num_samples=n,
    )


def feature_statistics(features: Tensor, labels: Tensor | None, num_classes: int, *,
                       outputs: Tensor | None = None, name: str = "",
                       max_bytes: int = DEFAULT_MAX_BYTES,
                       dtype: torch.dtype | None = None) -> LayerStatistics:
    """Redundancy Q, class-wise relevance R and output relevance of one layer from its feature maps.

    Parameters
    ----------
    features : torch.Tensor, shape (N, C, ...)
        Each sample's C channel maps (any trailing shape, flattened to D = H*W), N >= 2.
    labels : torch.Tensor of int, shape (N,), or None
        Class indices in [0, num_classes); None gives zero relevance.
    num_classes : int
        K.
    outputs : torch.Tensor, shape (N, ...), optional
        The response whose kernel gives `output_relevance` (logits, or a consumer's output).
    name : str, default ""
        The layer's name, for the result.
    max_bytes : int, default DEFAULT_MAX_BYTES
        Memory budget of one kernel tile (see Notes).
    dtype : torch.dtype, optional
        Precision of the computation: default the features' float dtype; float32 on GPU, float64
        for exact tests. Computed on the features' device.

    Returns
    -------
    LayerStatistics
        Q (C, C), R (C, K), output relevance (C,), dead channels and missing classes.

    See Also
    --------
    layer_statistics : The same for every prunable layer of a model.
    channel_kernels : The kernels Kbar materialised, the direct form for small N.

    Notes
    -----
    METHOD.md section 2, "Statistics": Gaussian channel kernels with the median bandwidth
    (exact zero distances left out), centred and Frobenius-normalised; one-vs-rest class kernels
    L^(c), through <H K H, L^(c)>_F = 1_c^T (H K H) 1_c (the class-block sums of the centred
    kernel). The C kernels of size N x N are never materialised: row tiles of the upper triangle
    are evaluated twice (row means for the centring, then the inner products, in float64
    accumulators).

    Memory: besides a (C, N, D) copy of the features, the peak is about
    2 (C + 3) rows (N - r0) itemsize <= max_bytes for a tile of `rows` rows starting at r0 (at
    least one row, so the floor is 2 (C + 3) N itemsize). Cost: about N^2 C (2D + C + 2) flops
    and N^2 C exponentials.

    Examples
    --------
    Q has a unit diagonal, a constant channel is dead, and R is the inner product of the
    normalised kernels (computed directly here):

    >>> import torch
    >>> from paperprune.ib import channel_kernels, feature_statistics
    >>> _ = torch.manual_seed(0)
    >>> features = torch.randn(30, 4, 5, 5, dtype=torch.float64)
    >>> features[:, 3] = 0
    >>> labels = torch.arange(30) % 3
    >>> stats = feature_statistics(features, labels, 4)
    >>> tuple(stats.redundancy.shape), tuple(stats.relevance.shape), stats.missing_classes
    ((4, 4), (4, 4), [3])
    >>> stats.dead.tolist(), stats.redundancy.diagonal().round(decimals=6).tolist()
    ([False, False, False, True], [1.0, 1.0, 1.0, 0.0])
    >>> H = torch.eye(30, dtype=torch.float64) - 1 / 30
    >>> one = (labels == 1).double()
    >>> L = H @ torch.outer(one, one) @ H
    >>> kbar = channel_kernels(features)
    >>> torch.allclose(stats.relevance[:, 1], (kbar * L / L.norm()).sum((1, 2)))
    True
    """
    if features.dim() < 2 or features.shape[0] < 2:
        raise PaperpruneError(f"features must be (N, C, ...) with N >= 2 samples; got shape {tuple(features.shape)}")
    n, c = features.shape[:2]
    dt = _float_dtype(features, dtype)
    x = torch.empty(c, n, features[0, 0].numel(), dtype=dt, device=features.device)
    x.copy_(features.reshape(n, c, -1).transpose(0, 1))
    if labels is not None:
        labels = _check_labels(labels, n, num_classes)
    out = None
    if outputs is not None:
        if outputs.shape[0] != n:
            raise PaperpruneError(f"outputs has {outputs.shape[0]} samples, features {n}; pass the same samples")
        out = _GaussianKernels(_as_stack(outputs.to(features.device), dt),
                               source_eps=_eps(outputs.dtype), max_bytes=max_bytes)
    return _statistics(name, x, labels, num_classes, out, source_eps=_eps(features.dtype),
                       max_bytes=max_bytes)


# --------------------------------------------------------------------------- model hooks


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _check_images(images: Tensor, min_samples: int = 1) -> None:
    if (not torch.is_tensor(images) or not images.is_floating_point() or images.dim() < 2
            or images.shape[0] < min_samples):
        raise PaperpruneError(
            f"images must be a float tensor (N, C, H, W) with N >= {min_samples}, normalised as "
            "the model expects; "
            f"got {getattr(images, 'dtype', type(images).__name__)} "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise PaperpruneError(f"images hold {bad} non-finite values (NaN or Inf); check the data and its "
                              "normalisation (a zero std?)")


def _submodule(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise PaperpruneError(f"{what} module {path!r} not found in {type(model).__name__}") from err


def _activation(model: nn.Module, layer) -> Callable[[Tensor], Tensor] | None:
    """The layer's `activation` (PrunableLayer): a module of the model or a torch.nn.functional name."""
    name = getattr(layer, "activation", None)
    if name is None:
        return None
    prefix = "torch.nn.functional."
    if name.startswith(prefix) and callable(getattr(nn.functional, name[len(prefix):], None)):
        return getattr(nn.functional, name[len(prefix):])
    return _submodule(model, name, f"activation ({layer.name})")


def _channel_axis(model: nn.Module, layer) -> int:
    """Where the layer's root module (`conv`, absent for a bare observation) puts its channels: 1 for a
    conv, -1 for a linear layer on tokens or channels-last maps (`paperprune.discover.channel_axis`)."""
    from .discover import channel_axis

    root = getattr(layer, "conv", None)
    return channel_axis(_submodule(model, root, f"conv ({layer.name})")) if root else 1


class _Observed(Exception):
    """Raised by the last observation hook to end a forward pass early."""


def _forward(model: nn.Module, layers: Sequence, images: Tensor, *, batch_size: int,
             device: torch.device, dtype: torch.dtype, keep_outputs: bool,
             order: Tensor | None = None, sink=None, class_means: _ClassMeans | None = None
             ) -> tuple[dict[str, Tensor], Tensor | None, dict[str, tuple[int, ...]]]:
    """Run `images` through `model` (eval, no grad) and gather each layer's observed
    output as a (C, N, H*W) tensor on `device` (the channels of a linear root, last in its output, moved
    first: (N, L, C) tokens give (C, N, L)); also the model outputs (N, K) if asked, and
    each layer's spatial shape (H, W).
    Without `keep_outputs`, every batch after the first stops once each observed module has
    run (the first runs whole, so that a module running twice is still caught).
    `order` (N,) visits the images in that order. A `sink` (`_BlockStream`) receives each batch's
    features instead, `sink.features(name, (C, b, H*W) in dtype on device)`, and then
    `sink.batch_end(outputs or None)`: nothing of size N is gathered. `class_means` (`_ClassMeans`)
    gathers the class means of the classifier's input in the same pass (every batch then runs whole).
    Training flags are restored and hooks removed whatever happens."""
    _check_images(images)
    if batch_size < 1:
        raise PaperpruneError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    model_device, model_dtype = _model_device_dtype(model)
    modules = {layer.name: _submodule(model, layer.observe, f"observe ({layer.name})") for layer in layers}
    activations = {layer.name: _activation(model, layer) for layer in layers}
    axes = {layer.name: _channel_axis(model, layer) for layer in layers}
    buffers: dict[str, Tensor] = {}
    spatial: dict[str, tuple[int, ...]] = {}
    seen: set[str] = set()
    span = [0, 0]

    def make_hook(name: str):
        def hook(module, inputs, output):
            if not torch.is_tensor(output) or output.dim() < 2:
                raise PaperpruneError(f"observe module of {name!r} must return a (B, C, ...) tensor")
            if name in seen:
                raise PaperpruneError(
                    f"observe module of {name!r} ran twice in one forward pass; observe a module "
                    "that runs once, e.g. the BatchNorm before a reused ReLU with "
                    "PrunableLayer(..., activation=<that ReLU's name>), or leave layers= out and let "
                    "paperprune.prune find them"
                )
            seen.add(name)
            if activations[name] is not None:
                output = activations[name](output.detach().clone())
            output = output.movedim(axes[name], 1)  # channels first: (B, C, ...)
            spatial[name] = tuple(output.shape[2:])
            feat = output.detach().reshape(output.shape[0], output.shape[1], -1)
            if sink is not None:
                sink.features(name, feat.transpose(0, 1).to(device=device, dtype=dtype, copy=True))
            else:
                if name not in buffers:
                    buffers[name] = torch.empty(feat.shape[1], n, feat.shape[2], dtype=dtype, device=device)
                buffers[name][:, span[0]:span[1]].copy_(feat.transpose(0, 1))
            if not keep_outputs and class_means is None and span[0] > 0 and len(seen) == len(modules):
                raise _Observed  # the rest of the network is not needed (the first batch runs whole)
        return hook

    flags = {m: m.training for m in model.modules()}
    handles = [mod.register_forward_hook(make_hook(name)) for name, mod in modules.items()]
    if class_means is not None:
        handles.append(class_means.head.register_forward_pre_hook(class_means.hook))
    outputs = []
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                span[:] = [start, min(n, start + batch_size)]
                seen.clear()
                indices = slice(start, span[1]) if order is None else order[start:span[1]]
                if class_means is not None:
                    class_means.batch = indices
                batch = images[indices] if order is None else images[indices.to(images.device)]
                batch = batch.to(device=model_device, dtype=model_dtype)
                try:
                    result = model(batch)
                except _Observed:
                    result = None
                missed = set(modules) - seen
                if missed:
                    raise PaperpruneError(f"observe modules of {sorted(missed)} did not run in the forward pass")
                if keep_outputs:
                    if not torch.is_tensor(result):
                        raise PaperpruneError("model output must be a tensor of logits (N, K)")
                    outputs.append(result.detach().reshape(result.shape[0], -1).to(device=device, dtype=dtype))
                if sink is not None:
                    sink.batch_end(outputs.pop() if outputs else None)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
    return buffers, (torch.cat(outputs) if keep_outputs and outputs else None), spatial


def channel_features(model: nn.Module, layers: Sequence, images: Tensor, *,
                     batch_size: int = 64, spatial: bool = False) -> dict[str, Tensor]:
    """{layer name: (N, C, H*W)} feature maps at each layer's `observe` module (any object
    with `name` and `observe` attributes, e.g. `paperprune.models.PrunableLayer`), on the
    model's device and dtype; (N, C, H, W) with `spatial=True` (HRank's matrix ranks need it).
    Eval mode, no grad; hooks removed and training flags restored."""
    device, dtype = _model_device_dtype(model)
    feats, _, shapes = _forward(model, layers, images, batch_size=batch_size, device=device, dtype=dtype,
                                keep_outputs=False)
    if spatial:
        return {name: f.transpose(0, 1).reshape(f.shape[1], f.shape[0], *shapes[name]) for name, f in feats.items()}
    return {name: f.transpose(0, 1) for name, f in feats.items()}


def _groups(layers: Sequence, sizes: dict[str, int], max_bytes: int) -> list[list]:
    """Consecutive layers whose features together fit max_bytes (at least one per group)."""
    groups: list[list] = []
    total = 0
    for layer in layers:
        if groups and total + sizes[layer.name] <= max_bytes:
            groups[-1].append(layer)
            total += sizes[layer.name]
        else:
            groups.append([layer])
            total = sizes[layer.name]
    return groups


def _consumers(layers: Sequence) -> dict[str, object]:
    """{layer name: a layer-like object observing the layer's consumer}, for APIB's response."""
    from .models import PrunableLayer

    out = {}
    for layer in layers:
        consumer = getattr(layer, "consumer", None)
        if not consumer:
            raise PaperpruneError(
                f"layer {layer.name!r} names no consumer; the 'consumer' response (APIB's) needs the module "
                "that consumes its channels: PrunableLayer(name, conv, observe, consumer=...)")
        out[layer.name] = PrunableLayer(name=f"{layer.name} -> {consumer}", conv=consumer, observe=consumer)
    return out


def layer_statistics(model: nn.Module, layers: Sequence, images: Tensor, labels: Tensor,
                     num_classes: int, *, response: str | None = "logits", batch_size: int | None = None,
                     max_bytes: int = DEFAULT_MAX_BYTES, device: str | torch.device | None = None,
                     dtype: torch.dtype | None = None, statistics: str = "exact", block_size: int | None = None,
                     permutations: int | None = None, seed: int = 0,
                     classifier: str | None = None) -> Statistics:
    """Redundancy Q, class-wise relevance R and output relevance of every prunable layer of a model.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (run in eval mode without gradients; training flags restored).
    layers : sequence of PrunableLayer
        Objects with `name` and `observe` (the module whose output is the channels after BN and
        activation), and `consumer` for ``response="consumer"``.
    images : torch.Tensor, shape (N, C, H, W)
        Calibration images, normalised as the model expects; N >= 2. May live on the CPU; they
        are moved batch by batch.
    labels : torch.Tensor of int, shape (N,)
        Class indices in [0, num_classes).
    num_classes : int
        K.
    response : {"logits", "consumer", None}, default "logits"
        The kernel behind `output_relevance`: the model's output, the output of each layer's
        `consumer` module (APIB's response), or none (zeros).
    batch_size : int, optional
        Forward batch; default 64, or for ``statistics="block"`` `block_batch_size` (80 for blocks
        of 20).
    max_bytes : int, default DEFAULT_MAX_BYTES
        Memory budget: layers are processed in groups whose features fit it (one forward pass
        per group), and each layer's kernel tiles fit it (`feature_statistics`).
    device : str or torch.device, optional
        Where the statistics are computed; default the model's device.
    dtype : torch.dtype, optional
        Precision; default float32 (float64 for exact tests).
    statistics : {"exact", "block"}, default "exact"
        The exact estimator, O(N^2) per channel, or the block estimator, O(N B M) per channel.
    block_size : int, optional
        B, samples per block (default 20); must divide N and the batch.
    permutations : int, optional
        M, random partitions of each batch into blocks (default 3).
    seed : int, default 0
        Seeds the block partitions (`block_partitions`).
    classifier : str, optional
        The name of the module producing the logits: its input's class means (`class_embeddings`)
        are gathered in the same forward pass, into the result's `class_embeddings`.

    Returns
    -------
    Statistics
        A dict with one entry per layer, keyed by name: Q (C, C), R (C, K), output relevance (C,);
        its `class_embeddings` (K, D) with `classifier`, else None.

    See Also
    --------
    feature_statistics : The same from one layer's feature maps.

    Notes
    -----
    The exact estimator is METHOD.md section 2, "Statistics"; ``response="consumer"`` is the
    response of the APIB baseline (section 2, "The APIB baseline"). The block estimator is
    section 2b: the class-stratified calibration set is streamed in batches, each cut
    `permutations` times into blocks of `block_size`; each block's centred B x B kernels are
    reduced to float64 inner products and freed, so memory is one batch's blocks (C x M S B per
    layer), never N x the features. Bandwidths come from the first batch on which a channel
    varies. Cost per layer: about N M B C (2D + C) flops against N^2 C (2D + C) for "exact";
    with B = S = N and M = 1 the two are equal (Examples).

    ResNet-50 on ImageNet (K = 1000, float32), estimated, not measured: the largest layer
    features are layer2.0.conv1's, 1.6 MB per sample, so N = 30,000 needs 48 GB of an 80 GB GPU
    (N = 40,000 is the practical ceiling); the whole model costs about 9.1e6 N^2 flops (0.9 PFLOP
    at N = 10,000, 8.2 at N = 30,000) plus 7.6e3 N^2 exponentials: about half a minute at
    N = 10,000 and 5-10 minutes at N = 30,000 on one H100 in float32.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from paperprune.ib import layer_statistics
    >>> from paperprune.models import PrunableLayer
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(
    ...     nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    >>> layers = [PrunableLayer("conv1", conv="0", observe="2", consumer="3")]
    >>> images, labels = torch.randn(24, 3, 8, 8), torch.arange(24) % 3
    >>> exact = layer_statistics(model, layers, images, labels, 3, dtype=torch.float64)
    >>> tuple(exact["conv1"].redundancy.shape), tuple(exact["conv1"].relevance.shape)
    ((8, 8), (8, 3))

    One block holding every sample, one partition: the block estimator is the exact one.

    >>> block = layer_statistics(model, layers, images, labels, 3, dtype=torch.float64,
    ...                          statistics="block", block_size=24, permutations=1)
    >>> all(torch.allclose(getattr(block["conv1"], f), getattr(exact["conv1"], f))
    ...     for f in ("redundancy", "relevance", "output_relevance"))
    True
    """
    if num_classes < 1:
        raise PaperpruneError(f"num_classes must be >= 1, got {num_classes}")
    if response not in ("logits", "consumer", None):
        raise PaperpruneError(f"response={response!r}: use 'logits', 'consumer' or None")
    statistics, block_size, permutations = check_statistics(statistics, block_size, permutations)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise PaperpruneError(f"batch_size={batch_size!r} must be a positive integer (or None for the default)")
    _check_images(images, min_samples=2)
    labels = _check_labels(torch.as_tensor(labels), images.shape[0], num_classes)
    model_device, model_dtype = _model_device_dtype(model)
    device = resolve_device(device) if device is not None else model_device
    dtype = dtype or torch.float32
    means = None if classifier is None else _ClassMeans(model, classifier, labels, num_classes)
    if statistics == "block":
        results = _block_statistics(model, layers, images, labels, num_classes, response=response,
                                    block_size=block_size, permutations=permutations, batch_size=batch_size,
                                    seed=seed, max_bytes=max_bytes, device=device, dtype=dtype, class_means=means)
        return Statistics(results, class_embeddings=None if means is None else means.result(model_dtype))
    batch_size = batch_size or 64
    itemsize = torch.empty((), dtype=dtype).element_size()
    consumers = _consumers(layers) if response == "consumer" else {}
    observed = list(layers) + list(consumers.values())
    probe, _, _ = _forward(model, observed, images[:1], batch_size=1, device=device, dtype=dtype,
                           keep_outputs=False)
    sizes = {name: f.numel() * images.shape[0] * itemsize for name, f in probe.items()}
    for name, consumer in consumers.items():
        sizes[name] += sizes[consumer.name]
    del probe
    labels = labels.to(device)
    source_eps = _eps(model_dtype)
    results: dict[str, LayerStatistics] = {}
    logits_kernel = None
    with tqdm(total=len(layers), desc="IB statistics", unit="layer", disable=None) as bar:
        for i, group in enumerate(_groups(layers, sizes, max_bytes)):
            watch = group + [consumers[layer.name] for layer in group if layer.name in consumers]
            keep = response == "logits" and logits_kernel is None
            feats, logits, _ = _forward(model, watch, images, batch_size=batch_size, device=device, dtype=dtype,
                                        keep_outputs=keep, class_means=means if i == 0 else None)  # first pass only
            if keep:
                logits_kernel = _GaussianKernels(logits[None], source_eps=source_eps, max_bytes=max_bytes)
            for layer in group:
                out = logits_kernel
                if layer.name in consumers:  # (C', N, HW) -> one (1, N, C' HW) response stack
                    out = _GaussianKernels(_as_stack(feats.pop(consumers[layer.name].name).transpose(0, 1), dtype),
                                           source_eps=source_eps, max_bytes=max_bytes)
                results[layer.name] = _statistics(layer.name, feats.pop(layer.name), labels,
                                                  num_classes, out, source_eps=source_eps,
                                                  max_bytes=max_bytes)
                bar.update(1)
    return Statistics(results, class_embeddings=None if means is None else means.result(model_dtype))


def class_embeddings(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int, *,
                     batch_size: int = 64, classifier: str = "classifier") -> Tensor:
    """(K, D) class means of the input of the module named `classifier` (the final nn.Linear, or a
    conv classifier's input averaged over positions), the penultimate embedding used to build the class
    graph and tree (METHOD.md section 2, "Class structure"). Classes without samples get a zero row.
    Eval mode, no grad. `layer_statistics(..., classifier=...)` gives the same from its own forward pass."""
    _check_images(images)
    labels = _check_labels(torch.as_tensor(labels), images.shape[0], num_classes)
    device, dtype = _model_device_dtype(model)
    means = _ClassMeans(model, classifier, labels, num_classes)
    _forward(model, [], images, batch_size=batch_size, device=device, dtype=dtype, keep_outputs=False,
             class_means=means)
    return means.result(dtype)


class _ClassMeans:
    """Per-class sums of the classifier's input, gathered by a pre-hook during `_forward` (which sets
    `batch`, the indices of the images in each batch)."""

    def __init__(self, model: nn.Module, classifier: str, labels: Tensor, num_classes: int):
        try:
            head = model.get_submodule(classifier)
        except AttributeError:
            head = None
        if not isinstance(head, nn.Module):
            raise PaperpruneError(f"{type(model).__name__} has no module {classifier!r}; name its final nn.Linear "
                                  "(the class embeddings are that layer's input), e.g. classifier=\"fc\"")
        self.head, self.labels, self.num_classes = head, labels, num_classes
        self.sums: Tensor | None = None
        self.batch: Tensor | slice = slice(0, 0)

    def hook(self, module, inputs):
        emb = inputs[0].detach()
        # a conv classifier (K channels before global pooling): its input averaged over positions
        emb = (emb.mean((2, 3)) if isinstance(module, nn.Conv2d) and emb.dim() == 4 else emb.flatten(1)).double()
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, emb.shape[1], dtype=torch.float64, device=emb.device)
        labels = self.labels[self.batch].to(emb.device)
        self.sums.addmm_(nn.functional.one_hot(labels, self.num_classes).double().T, emb)

    def result(self, dtype: torch.dtype) -> Tensor:
        counts = torch.bincount(self.labels.cpu(), minlength=self.num_classes).double().to(self.sums.device)
        return (self.sums / counts.clamp_min(1)[:, None]).to(dtype)


# --------------------------------------------------------------------------- block statistics

STATISTICS = ("exact", "block")
"""How Q and R are estimated: "exact" (section 2, O(N^2) per channel) or "block" (section 2b)."""

BLOCK_SIZE = 20
"""Default samples per block B of the block statistics (pyHSICLasso's default B)."""

PERMUTATIONS = 3
"""Default random partitions M of each batch into blocks (pyHSICLasso's default M)."""

BLOCK_BATCH = 64
"""Block statistics stream batches of the smallest multiple of the block size >= this many samples."""


def check_statistics(statistics, block_size=None, permutations=None) -> tuple[str, int | None, int | None]:
    """(statistics, block_size, permutations) checked, block options defaulted for "block" and None for
    "exact". Block options given with "exact" are refused: they would be recorded and mean nothing."""
    from .utils import as_number

    if statistics not in STATISTICS:
        raise PaperpruneError(f"statistics={statistics!r} (--statistics): use 'exact' (METHOD.md section 2, "
                              "O(N^2) per channel) or 'block' (section 2b, blocks of block_size samples)")
    if statistics == "exact":
        given = [f"{k}={v!r}" for k, v in (("block_size", block_size), ("permutations", permutations))
                 if v is not None]
        if given:
            raise PaperpruneError(f"{' and '.join(given)} apply to statistics='block' only; pass "
                                  "statistics='block' (--statistics block) to use them, or leave them out")
        return "exact", None, None
    block_size = BLOCK_SIZE if block_size is None else as_number(block_size, "block_size (--block-size)", int)
    if block_size < 2:
        raise PaperpruneError(f"block_size={block_size} (--block-size) must be >= 2: a block's kernel needs two "
                              f"samples; the default is {BLOCK_SIZE}")
    permutations = (PERMUTATIONS if permutations is None
                    else as_number(permutations, "permutations (--permutations)", int))
    if permutations < 1:
        raise PaperpruneError(f"permutations={permutations} (--permutations) must be >= 1: the random "
                              f"partitions of each batch into blocks; the default is {PERMUTATIONS}")
    return "block", block_size, permutations


def check_block_samples(samples: int, block_size: int) -> None:
    """The calibration set must fill whole blocks: block_size divides the N samples."""
    if samples < block_size or samples % block_size:
        fits = [b for b in range(2, min(samples, 100) + 1) if samples % b == 0]
        near = sorted(fits, key=lambda b: (abs(b - block_size), b))[:4]
        raise PaperpruneError(
            f"block_size={block_size} (--block-size) must divide the {samples} calibration samples (every "
            f"sample sits in one block of each partition); pass a block size that divides {samples} "
            f"({', '.join(map(str, sorted(near))) or 'none in 2..100'}) or change samples_per_class so that "
            f"classes x samples_per_class is a multiple of {block_size}")


def block_batch_size(samples: int, block_size: int) -> int:
    """S: the smallest multiple of `block_size` >= BLOCK_BATCH, at most the N samples."""
    return min(samples, block_size * -(-BLOCK_BATCH // block_size))


def block_partitions(labels: Tensor, num_classes: int, *, block_size: int, permutations: int,
                     batch_size: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """The batches and blocks of the block statistics (METHOD.md section 2b), seeded.

    The samples are put in class-stratified order (round r holds the r-th sample of every class,
    samples drawn at random within their class, classes in one random order) and cut into
    batches of `batch_size` (a multiple of `block_size`, as N is). Returns one (indices, parts)
    per batch: `indices` (S_b,) the batch's samples (positions in `labels`), `parts`
    (permutations, S_b / block_size, block_size) the blocks of each random partition, as
    positions within the batch (`indices[parts]` are the samples of each block).
    """
    labels = labels.detach().cpu().long()
    n = labels.numel()
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    onehot = nn.functional.one_hot(labels[perm], num_classes)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1                 # rank of each sample within its class
    class_key = torch.randperm(num_classes, generator=gen)
    order = perm[torch.argsort(rank * num_classes + class_key[labels[perm]], stable=True)]
    batches = []
    for start in range(0, n, batch_size):
        indices = order[start:start + batch_size]
        parts = torch.stack([torch.randperm(indices.numel(), generator=gen) for _ in range(permutations)])
        batches.append((indices, parts.reshape(permutations, -1, block_size)))
    return batches


class _BlockKernels:
    """Centred Gaussian Grams of blocks, for C channels whose bandwidths are fixed on the first batch
    where each channel varies (a channel constant on a batch has centred block kernels 0 whatever
    its bandwidth, so fixing it later changes nothing already accumulated)."""

    def __init__(self, channels: int, device: torch.device, dtype: torch.dtype, *, source_eps: float,
                 max_bytes: int):
        self.scale = torch.full((channels,), math.nan, dtype=dtype, device=device)   # -1 / (2 s_k^2)
        self.constant = torch.ones(channels, dtype=torch.bool, device=device)       # on every batch so far
        self.source_eps, self.max_bytes = source_eps, max_bytes

    def centred(self, x: Tensor, parts: Tensor) -> Tensor:
        """(C, P, B, B): H_B K H_B of every block of `parts` (M, nb, B) over the batch x (C, S, D),
        which is consumed (centred in place), P = M nb."""
        kern = _GaussianKernels(x, source_eps=self.source_eps, max_bytes=self.max_bytes, scale=self.scale)
        self.scale, self.constant = kern.scale, self.constant & kern.constant
        scale = torch.nan_to_num(kern.scale, nan=-0.5)[:, None, None, None]   # NaN only on constant channels
        c, _, d = kern.x.shape
        m, nb, b = parts.shape
        out = []
        for rows in parts.to(x.device):
            xb = kern.x[:, rows.flatten()].reshape(c, nb, b, d)
            sq = kern.sq[:, rows.flatten()].reshape(c, nb, b)
            t = torch.matmul(xb, xb.transpose(2, 3)).mul_(-2).add_(sq[..., :, None]).add_(sq[..., None, :])
            t = t.clamp_min_(0).mul_(scale).exp_()
            mean = t.mean(dim=3, keepdim=True)
            out.append(t.sub_(mean).sub_(mean.transpose(2, 3)).add_(mean.mean(dim=2, keepdim=True)))
            del xb, sq
        return torch.cat(out, dim=1)


class _BlockLayer:
    """One layer's accumulators: G (C, C), class sums g (C, K) and the response cross terms (C,)."""

    def __init__(self, channels: int, num_classes: int, device, dtype, **kernel_options):
        f64 = dict(dtype=torch.float64, device=device)
        self.kernels = _BlockKernels(channels, device, dtype, **kernel_options)
        self.gram = torch.zeros(channels, channels, **f64)
        self.class_sums = torch.zeros(channels, num_classes, **f64)
        self.out_cross = torch.zeros(channels, **f64)

    def add(self, x: Tensor, parts: Tensor, labels: Tensor) -> Tensor:
        """Accumulate one batch x (C, S, D) with labels (S,); returns its centred blocks (C, P, B, B)."""
        a = self.kernels.centred(x, parts)
        c, _, b, _ = a.shape
        flat = a.reshape(c, -1)
        self.gram += (flat @ flat.T).double()
        block_labels = labels[parts.to(labels.device)].reshape(-1, b)               # (P, B)
        same = (block_labels[:, :, None] == block_labels[:, None, :]).to(a.dtype)
        rows = (a * same).sum(dim=3)              # (C, P, B): sum_j A_ij [y_i = y_j], i.e. 1_c^T A 1_c by class
        self.class_sums.index_add_(1, block_labels.flatten(), rows.reshape(c, -1).double())
        return a

    def add_response(self, a: Tensor, o: Tensor) -> None:
        """Cross terms <a^(k), o> of the centred blocks a (C, P, B, B) with the response's o (1, P, B, B)."""
        self.out_cross += (a.reshape(a.shape[0], -1) @ o.reshape(-1).to(a.dtype)).double()


class _BlockStream:
    """The sink of `_forward` for the block statistics: every batch's features become their blocks'
    centred kernels, are accumulated and freed; held across a batch are only the centred blocks of
    the layers waiting for their response (the consumer's output, or the logits at the batch's end)."""

    def __init__(self, layers: Sequence, consumers: dict, batches, labels: Tensor, num_classes: int,
                 response: str | None, device, dtype, source_eps: float, max_bytes: int):
        self.layers = {layer.name: layer for layer in layers}
        self.consumer_of = {consumer.name: name for name, consumer in consumers.items()}
        self.batches, self.labels, self.num_classes, self.response = batches, labels, num_classes, response
        self.device, self.dtype = device, dtype
        self.options = dict(source_eps=source_eps, max_bytes=max_bytes)
        self.acc: dict[str, _BlockLayer] = {}
        self.responses: dict[str, _BlockKernels] = {}     # by layer (consumer) or "" (logits)
        self.pending: dict[str, list] = {}                 # layer -> [its blocks, its response blocks]
        self.class_norm2 = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.out_norm2: dict[str, Tensor] = {}
        self.batch = 0
        self.block_count = 0

    def _response_blocks(self, key: str, x: Tensor, parts: Tensor) -> Tensor:
        if key not in self.responses:
            self.responses[key] = _BlockKernels(1, self.device, self.dtype, **self.options)
            self.out_norm2[key] = torch.zeros((), dtype=torch.float64, device=self.device)
        o = self.responses[key].centred(_as_stack(x, self.dtype), parts)   # x: (S, ...) samples first
        self.out_norm2[key] += o.square().sum().double()
        return o

    def _pair(self, name: str, slot: int, value: Tensor) -> None:
        held = self.pending.setdefault(name, [None, None])
        held[slot] = value
        if held[0] is not None and held[1] is not None:
            self.acc[name].add_response(*held)
            del self.pending[name]

    def features(self, name: str, x: Tensor) -> None:
        indices, parts = self.batches[self.batch]
        if name in self.consumer_of:
            layer = self.consumer_of[name]
            self._pair(layer, 1, self._response_blocks(layer, x.transpose(0, 1), parts))
            return
        if name not in self.acc:
            self.acc[name] = _BlockLayer(x.shape[0], self.num_classes, self.device, self.dtype, **self.options)
        a = self.acc[name].add(x, parts, self.labels[indices.to(self.labels.device)])
        if self.response is not None:
            self._pair(name, 0, a)

    def batch_end(self, outputs: Tensor | None) -> None:
        indices, parts = self.batches[self.batch]
        if self.response == "logits":
            o = self._response_blocks("", outputs, parts)
            for name in list(self.pending):
                self._pair(name, 1, o)
        if self.pending:
            raise RuntimeError(f"internal error: no response for {sorted(self.pending)} in batch {self.batch}")
        block_labels = self.labels[indices.to(self.labels.device)][parts.to(self.labels.device)]
        counts = nn.functional.one_hot(block_labels, self.num_classes).sum(dim=2).double()   # (M, nb, K)
        b = parts.shape[2]
        self.class_norm2 += (counts - counts.square() / b).square().sum(dim=(0, 1))   # ||H_B L^(c) H_B||_F^2
        self.block_count += parts.shape[0] * parts.shape[1]
        self.batch += 1

    def result(self, name: str, block_size: int, num_samples: int, missing: list[int]) -> LayerStatistics:
        """Section 2b's normalisation: Q = G_km / sqrt(G_kk G_mm), R = g_kc / sqrt(G_kk n_c)."""
        acc = self.acc[name]
        tol = _dead_tolerance(block_size, self.dtype) * math.sqrt(self.block_count)
        norm = acc.gram.diagonal().clamp_min(0).sqrt()
        dead = acc.kernels.constant | (norm <= tol)
        inv = torch.where(dead, torch.zeros_like(norm), 1.0 / torch.where(dead, torch.ones_like(norm), norm))
        class_norm = self.class_norm2.sqrt()
        inv_class = torch.where(class_norm > 0, 1.0 / class_norm.clamp_min(1e-300), torch.zeros_like(class_norm))
        key = "" if self.response == "logits" else name
        out_norm = self.out_norm2[key].clamp_min(0).sqrt() if key in self.out_norm2 else torch.zeros(())
        output_relevance = (acc.out_cross * inv / out_norm if out_norm > tol
                            else torch.zeros_like(acc.out_cross))
        return LayerStatistics(
            name=name,
            redundancy=(acc.gram * inv[:, None] * inv[None, :]).to(self.dtype),
            relevance=(acc.class_sums * inv[:, None] * inv_class[None, :]).to(self.dtype),
            output_relevance=output_relevance.to(self.dtype),
            dead=dead,
            missing_classes=missing,
            num_samples=num_samples,
        )


def _block_statistics(model: nn.Module, layers: Sequence, images: Tensor, labels: Tensor, num_classes: int, *,
                      response: str | None, block_size: int, permutations: int, batch_size: int | None,
                      seed: int, max_bytes: int, device: torch.device, dtype: torch.dtype,
                      class_means: _ClassMeans | None = None) -> dict[str, LayerStatistics]:
    """METHOD.md section 2b for every layer in one streamed forward pass (see `layer_statistics`)."""
    n = images.shape[0]
    check_block_samples(n, block_size)
    batch_size = block_batch_size(n, block_size) if batch_size is None else batch_size
    if batch_size % block_size:
        raise PaperpruneError(f"batch_size={batch_size} must be a multiple of block_size={block_size}: each batch "
                              "is cut into whole blocks; pass e.g. "
                              f"batch_size={block_size * max(1, round(batch_size / block_size))}")
    batches = block_partitions(labels, num_classes, block_size=block_size, permutations=permutations,
                               batch_size=batch_size, seed=seed)
    order = torch.cat([indices for indices, _ in batches])
    consumers = _consumers(layers) if response == "consumer" else {}
    stream = _BlockStream(layers, consumers, batches, labels.to(device), num_classes, response, device, dtype,
                          source_eps=_eps(_model_device_dtype(model)[1]), max_bytes=max_bytes)
    _forward(model, list(layers) + list(consumers.values()), images, batch_size=batch_size, device=device,
             dtype=dtype, keep_outputs=response == "logits", order=order, sink=stream, class_means=class_means)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    return {layer.name: stream.result(layer.name, block_size, n, missing) for layer in layers}
