"""Pruning criteria: objects that score channels (the Torch-Pruning pattern).

Every criterion is prepared once on a model and a class-balanced calibration set, then asked
`select(level)` by the budget rule (paperprune.select), which bisects the one global level.
`select` returns, per prunable layer, the kept-channel mask and a ranking used only to top a
layer up to the floor omega.

Seven criteria share that one code path:

- `random`: uniform scores (seeded); a sanity floor.
- `l1`: filter L1 norm (Li et al., ICLR 2017).
- `hrank`: average rank of the channel's feature maps (Lin et al., CVPR 2020).
- `apib`: HSIC lasso with a single, class-agnostic response, the kernel of the output of the
  layer that consumes the channels (APIB, Guo et al., ICCV 2023; in this notation K = 1).
- `classwise`: our class-wise statistics (one response per class) with a plain lasso, no
  graph and no tree: the ablation of the structure.
- `sglp`: sGLP-IB, class-wise statistics + graph-guided fused lasso over classes.
- `stlp`: sTLP-IB, class-wise statistics + tree-guided group lasso over a class tree.

The names sGLP-IB / sTLP-IB and the idea (structured lasso on class-wise IB statistics) are
from the paper's abstract; the exact objectives and the budget rule are reconstruction
(METHOD.md section 2). The lasso criteria are signed by default, as APIB's code is;
`nonnegative=True` is the B >= 0 ablation, and `response="class+output"` gives the class-wise
criteria APIB's response (the consuming layer's output kernel) as one more column beside the
class kernels (the ablation "class-wise vs class-wise + APIB's response").
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .discover import unit_width
from .ib import check_statistics
from .lasso import SOLVER_MAX_ITER
from .utils import PaperpruneError

__all__ = ["AGNOSTIC", "CLASSWISE", "LASSO", "METHODS", "RESPONSES", "APIBCriterion", "Calibration",
           "ClasswiseCriterion", "Criterion", "HRankCriterion", "L1Criterion", "LassoCriterion", "RandomCriterion",
           "SGLPCriterion", "STLPCriterion", "ScoreCriterion", "check_method", "create_criterion"]

METHODS = ("random", "l1", "hrank", "apib", "classwise", "sglp", "stlp")
#: the criteria with class-wise information (METHOD.md section 2), and the class-agnostic ones they are compared with
CLASSWISE = ("classwise", "sglp", "stlp")
AGNOSTIC = ("l1", "hrank", "apib", "random")
#: the criteria computed from the HSIC statistics (METHOD.md section 2), whose `statistics` option applies
LASSO = ("apib", "classwise", "sglp", "stlp")


@dataclass
class Calibration:
    """A class-balanced calibration set: n samples per class over K classes (METHOD.md section 2).

    `images` (N, C, H, W) float, normalised as the model expects; `labels` (N,) in [0, K);
    `num_classes` K; `taxonomy` the dataset's superclasses ({name: classes}, for
    ``structure="taxonomy"``); `classifier` the module producing the logits, whose input gives
    the class embeddings.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    taxonomy: dict[str, list[int]] = field(default_factory=dict)
    classifier: str = "classifier"


class Criterion:
    """The contract every channel-selection criterion meets: prepared once, then asked for kept sets by level.

    A criterion is prepared once on a model, its prunable layers and a calibration set
    (`prepare`); it then maps a level in `bounds()` to a kept-channel mask per layer
    (`select`). Higher levels keep fewer channels, and the highest keeps none, so the budget
    rule (`paperprune.select`) can bisect the one global level to a MACs target. Subclasses set
    `name` and implement `prepare`, `bounds` and `select`; `describe` says what a level means,
    for the report.

    Attributes
    ----------
    name : str
        The criterion's name (`METHODS`).
    channels : dict of str to int
        Channels C of each prepared layer, by layer name.

    See Also
    --------
    create_criterion : The criterion of a given name.
    ScoreCriterion : A criterion given by one score per channel.
    paperprune.tp.Importance : Any criterion as a Torch-Pruning importance.

    Notes
    -----
    The lasso criteria's level u is lam = lam_lo * exp(u), lam_lo = 1e-4 lam_hi, lam_hi the
    first doubling of max |R| at which every layer's B is zero (METHOD.md section 2,
    "Automatic budget"); their ranking is B's row norms (section 2, "Penalties"). The score
    criteria's level is a threshold on scores divided by their layer's maximum. The ranking is
    used to top a layer up to the floor omega and, under the uniform allocation, to choose which
    channels each layer keeps (section 2, "Allocation").

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from paperprune.criteria import Calibration, create_criterion
    >>> from paperprune.models import PrunableLayer
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(
    ...     nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    >>> layers = [PrunableLayer("conv1", conv="0", observe="2"), PrunableLayer("conv2", conv="3", observe="5")]
    >>> images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    >>> criterion = create_criterion("stlp")
    >>> criterion.prepare(model, layers, Calibration(images, labels, num_classes=4, classifier="8"))
    >>> criterion.channels
    {'conv1': 16, 'conv2': 16}
    >>> lo, hi = criterion.bounds()
    >>> mask, ranking = criterion.select(lo)["conv1"]
    >>> mask.dtype, tuple(mask.shape), tuple(ranking.shape)
    (torch.bool, (16,), (16,))
    >>> kept = [sum(int(m.sum()) for m, _ in criterion.select(u).values()) for u in (lo, (lo + hi) / 2, hi)]
    >>> kept[0] >= kept[1] >= kept[2] == 0
    True
    """

    name = "criterion"

    def __init__(self) -> None:
        self.channels: dict[str, int] = {}

    def prepare(self, model: nn.Module, layers, calibration: Calibration) -> None:
        """Compute what `select` needs (statistics, scores) once; sets `channels`.

        Parameters
        ----------
        model : torch.nn.Module
            The trained model, in eval mode.
        layers : sequence of PrunableLayer
            The layers to score.
        calibration : Calibration
            The class-balanced calibration set.
        """
        raise NotImplementedError

    def bounds(self) -> tuple[float, float]:
        """The range (lo, hi) of levels: lo keeps the most channels, hi none."""
        raise NotImplementedError

    def select(self, level: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer name: the kept mask (C,) bool at `level` and a ranking (C,) of its channels.

        Parameters
        ----------
        level : float
            A level within `bounds()`; higher keeps fewer channels.

        Returns
        -------
        dict of str to (torch.Tensor, torch.Tensor)
            The mask and the ranking (higher is more important) of each prepared layer.
        """
        raise NotImplementedError

    def describe(self, level: float) -> dict:
        """What the level means for this criterion, for the report."""
        return {"threshold": level}


class ScoreCriterion(Criterion):
    """A criterion given by one non-negative score per channel.

    Scores are divided by their layer's maximum, and the level is one global threshold on
    the normalised scores: a channel is kept iff its normalised score exceeds the level.
    """

    def channel_scores(self, model, layers, calibration) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, model, layers, calibration):
        scores = self.channel_scores(model, layers, calibration)
        self.scores = {}
        for name, s in scores.items():
            s = s.detach().double().cpu()
            if not torch.isfinite(s).all() or (s < 0).any():
                raise PaperpruneError(f"{self.name}: scores of layer {name!r} are not finite and non-negative")
            self.scores[name] = s / s.max() if s.max() > 0 else torch.zeros_like(s)
        self.channels = {name: s.numel() for name, s in self.scores.items()}

    def bounds(self):
        return -1.0, 1.0

    def select(self, level):
        return {name: (s > level, s) for name, s in self.scores.items()}


class RandomCriterion(ScoreCriterion):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def channel_scores(self, model, layers, calibration):
        gen = torch.Generator().manual_seed(self.seed)
        return {layer.name: torch.rand(unit_width(_conv(model, layer)), generator=gen, dtype=torch.float64)
                for layer in layers}


class L1Criterion(ScoreCriterion):
    """Filter L1 norm, sum |W[k, :, :, :]| (Li et al., ICLR 2017); a linear root's row norm sum |W[k, :]|."""

    name = "l1"

    def channel_scores(self, model, layers, calibration):
        return {layer.name: _conv(model, layer).weight.detach().abs().flatten(1).sum(1) for layer in layers}


class HRankCriterion(ScoreCriterion):
    """Average rank of each channel's feature maps over the calibration set (Lin et al., CVPR 2020)."""

    name = "hrank"

    def channel_scores(self, model, layers, calibration):
        from .ib import channel_features

        features = channel_features(model, layers, calibration.images, spatial=True)
        for name, fm in features.items():
            if fm.dim() != 4:
                raise PaperpruneError(
                    f"hrank: layer {name!r} gives features of shape {tuple(fm.shape[1:])} per image (channels "
                    "first), not (C, H, W) maps: HRank ranks a channel's 2-D map, which a sequence of tokens is "
                    "not; use l1 or a lasso criterion for this model, or leave this layer out (layers=)")
        return {name: torch.linalg.matrix_rank(fm.double()).double().mean(0) for name, fm in features.items()}


class LassoCriterion(Criterion):
    """HSIC-lasso criteria: kept channels are B's non-zero rows at the global lam.

    Row norms of B are the channel scores (METHOD.md section 2); `row_tol` is the norm under
    which a row counts as zero. The level u maps to lam = lam_lo * exp(u) for u >= 0; lam_hi is
    the first doubling of max |R| at which every B is zero and lam_lo = 1e-4 lam_hi the weakest
    lasso. B is signed unless `nonnegative`: the signed support grows to every non-dead channel
    as lam -> 0, so one global lam reaches any target between the floor and no pruning.

    Top-up by relevance, under `nonnegative=True` only (a choice of this project, reported per
    run): with B >= 0 the lasso's support cannot grow past the non-negative least-squares
    support, which on redundant layers can already prune more than asked (e.g. 86% of an
    untrained VGG-16's MACs). For u in [-1, 0) the kept set is the support at lam_lo plus every
    channel whose relevance ||R_k|| (normalised by its layer's maximum) exceeds 1 + u: the lasso
    zeroed those channels as redundant given the others, and among them the most relevant come
    next. APIB meets the same limit with large per-layer floors (omega = 40 for VGG-16 in its
    README).

    `statistics` is how Q and R are estimated: "exact" (METHOD.md section 2) or "block" (section
    2b, blocks of `block_size` samples over `permutations` partitions seeded by `seed`; see
    `paperprune.ib.layer_statistics`).
    """

    def __init__(self, *, gamma_ratio: float = 0.5, nonnegative: bool = False, structure: str = "embedding",
                 response: str = "class", row_tol: float = 1e-7, solver_tol: float = 1e-7,
                 max_iter: int = SOLVER_MAX_ITER, statistics: str = "exact", block_size: int | None = None,
                 permutations: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.estimator, self.block_size, self.permutations = check_statistics(statistics, block_size, permutations)
        self.seed = seed
        if response not in RESPONSES:
            raise PaperpruneError(f"response={response!r}: use 'class' (one response per class) or "
                                  "'class+output' (those plus APIB's, the consuming layer's output)")
        if not isinstance(gamma_ratio, numbers.Real) or not math.isfinite(gamma_ratio) or gamma_ratio < 0:
            raise PaperpruneError(f"gamma_ratio={gamma_ratio!r} must be a finite number >= 0 "
                                  "(gamma = gamma_ratio * lam)")
        if not isinstance(nonnegative, bool):
            raise PaperpruneError(f"nonnegative={nonnegative!r} must be True or False")
        if structure not in ("embedding", "taxonomy"):
            raise PaperpruneError(f"structure={structure!r}: use 'embedding' (built from the model's class "
                                  "embeddings) or 'taxonomy' (the dataset's known class hierarchy)")
        self.gamma_ratio = float(gamma_ratio)
        self.nonnegative = nonnegative
        self.structure = structure
        self.response_option = response
        if response == "class+output":
            self.response_source = "consumer"
        self.row_tol = row_tol
        self.solver_tol = solver_tol
        self.max_iter = check_max_iter(max_iter)
        self._warm: dict[str, torch.Tensor] = {}
        self._unconverged: dict[float, list[str]] = {}
        self._support: dict[float, int] = {}
        self._selected: dict[float, dict] = {}
        self._causes: dict[str, str] = {}  # a stalled layer's rank of Q, computed once per prepare

    #: the response kernel of `layer_statistics`: None (class kernels only), or "consumer"
    response_source: str | None = None

    def prepare(self, model, layers, calibration):
        from .ib import layer_statistics

        self.statistics = layer_statistics(model, layers, calibration.images, calibration.labels,
                                           calibration.num_classes, response=self.response_source,
                                           statistics=self.estimator, block_size=self.block_size,
                                           permutations=self.permutations, seed=self.seed,
                                           classifier=calibration.classifier)
        self.embeddings = self.statistics.class_embeddings  # from the same forward pass
        self.calibration_taxonomy = calibration.taxonomy
        self.build_structure()
        self.problems = {name: (st.redundancy.double(), self.response(st).double())
                         for name, st in self.statistics.items()}
        self.relevance = {}
        for name, (_, R) in self.problems.items():
            norms = R.norm(dim=1)
            self.relevance[name] = norms / norms.max() if norms.max() > 0 else norms
        self.channels = {name: Q.shape[0] for name, (Q, _) in self.problems.items()}
        self._warm.clear()
        self._unconverged.clear()
        self._support.clear()
        self._selected.clear()
        self._causes.clear()
        self.lam_hi = self._empty_lam()
        self.lam_lo = 1e-4 * self.lam_hi

    def build_structure(self) -> None:
        """Build the class graph or tree the penalty needs (nothing for the plain lasso)."""

    def response(self, stats) -> torch.Tensor:
        """R (C, K), or (C, K + 1) with `response='class+output'`: the output relevance as a last column."""
        if self.response_option == "class+output":
            return torch.cat([stats.relevance, stats.output_relevance.reshape(-1, 1)], 1)
        return stats.relevance

    def solve(self, Q, R, lam, B0):
        from .lasso import solve_sglp
        from .structure import ClassGraph

        empty = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=Q.dtype),
                           torch.zeros(0, dtype=Q.dtype))
        return solve_sglp(Q, R, empty, lam, 0.0, nonnegative=self.nonnegative, tol=self.solver_tol,
                          max_iter=self.max_iter, B0=B0)

    def solutions(self, lam: float) -> dict[str, torch.Tensor]:
        """B per layer at `lam`, warm-started from the last solve; layers whose solve stopped at max_iter
        are remembered per lam (`describe` reports them)."""
        out, stalled = {}, []
        for name, (Q, R) in self.problems.items():
            result = self.solve(Q, R, lam, self._warm.get(name))
            self._warm[name] = result.B
            out[name] = result.B
            if not result.converged:
                stalled.append(name)
        self._unconverged[lam] = stalled
        return out

    def solution_bound(self, Q, R, lam: float) -> float:
        """A lower bound on the norm of the layer's B at `lam` (`paperprune.lasso.solution_norm_bound`)."""
        from .lasso import solution_norm_bound

        return solution_norm_bound(Q, R, lam, nonnegative=self.nonnegative)

    def _empty_lam(self) -> float:
        """The first doubling of max |R| at which every layer's B is zero. A lam at which `solution_bound`
        shows some layer keeping a row above 10 `row_tol` (so a solve within tolerance keeps it too) is
        passed over without solving: solving there costs as much as any step of the bisection (521 s for
        sTLP-IB at 1,000 classes, benchmarks/results/imagenet-scale.md), and its B is not used."""
        hi = max(max(float(R.abs().max()) for _, R in self.problems.values()), 1e-12)
        for _ in range(64):
            kept = any(self.solution_bound(Q, R, hi) > 10 * self.row_tol * math.sqrt(Q.shape[0])
                       for Q, R in self.problems.values())
            if not kept and all(not bool((B.norm(dim=1) > self.row_tol).any()) for B in self.solutions(hi).values()):
                return hi
            hi *= 2.0
        raise PaperpruneError(f"{self.name}: could not find a lam at which every layer is empty")

    def lam(self, level: float) -> float:
        return self.lam_lo * math.exp(max(level, 0.0))

    def describe(self, level: float) -> dict:
        """lam at `level`, the channels the lasso itself kept there, and the top-up threshold if used."""
        if level not in self._support:
            self.select(level)
        stalled = self._unconverged.get(self.lam(level), [])
        if stalled:
            warnings.warn(f"{self.name}: the solver stopped at max_iter={self.max_iter} before its tolerance on "
                          f"{len(stalled)} layer(s) at the chosen lam, so their kept channels are approximate: "
                          f"{self._stall_causes(stalled)}. A rank-deficient or ill-conditioned Q leaves near-flat "
                          "directions (e.g. weight shared between near-duplicate channels) along which ADMM moves "
                          "slowly; raise max_iter, and where Q's rank is bounded by the samples, use more samples "
                          "per class.",
                          stacklevel=2)
        return {"lam": self.lam(level), "gamma": None, "nonnegative": self.nonnegative,
                "response": self.response_option, "relevance_threshold": 1.0 + level if level < 0 else None,
                "lasso_support": self._support[level], "unconverged_layers": stalled,
                "statistics": self.estimator, "block_size": self.block_size, "permutations": self.permutations}

    def _stall_causes(self, stalled: list[str]) -> str:
        """Each stalled layer with the numerical rank of its Q (eigenvalues above 1e-6 of the largest) and,
        where it binds, the N(N-1)/2 bound N calibration samples put on that rank; a full-rank Q with its
        condition number."""
        n = self.statistics[stalled[0]].num_samples
        bound = n * (n - 1) // 2
        for name in stalled[:4]:
            if name not in self._causes:
                q = torch.linalg.eigvalsh(self.problems[name][0])
                rank, channels = int((q > 1e-6 * q[-1].clamp_min(1e-300)).sum()), q.numel()
                self._causes[name] = (
                    f"{name} (Q of full rank {rank}, condition number {float(q[-1] / q[0]):.1e})" if rank == channels
                    else f"{name} (Q of rank {rank} for {channels} channels"
                    + (f"; {n} samples bound it by {bound})" if bound < channels else ")"))
        return ", ".join(self._causes[name] for name in stalled[:4]) + (", ..." if len(stalled) > 4 else "")

    def select(self, level):
        """Kept masks and ranks at `level`, memoised: the budget rule of several targets on one prepared
        criterion (the curves) asks again for the same levels (its bounds and first bisection steps)."""
        if level in self._selected:
            return self._selected[level]
        chosen, support = {}, 0
        for name, B in self.solutions(self.lam(level)).items():
            norms = B.norm(dim=1)
            mask = norms > self.row_tol
            support += int(mask.sum())
            if level < 0:
                mask = mask | (self.relevance[name] > 1.0 + level)
            chosen[name] = (mask, norms + 1e-12 * self.relevance[name])
        self._support[level] = support
        self._selected[level] = chosen
        return chosen

    def bounds(self):
        return (-1.0 if self.nonnegative else 0.0), math.log(self.lam_hi / self.lam_lo)


class APIBCriterion(LassoCriterion):
    """APIB as its code computes it (sunggo/APIB, `pruners/HSIClasso.py`): one class-agnostic
    response, the normalised kernel of the output of the layer that consumes the candidate channels
    (`PrunableLayer.consumer`: a ResNet block's conv2, the next VGG conv, the first linear layer
    after VGG's last conv), a signed lasso by default, a channel kept iff its coefficient is non-zero.

    Differences that remain (METHOD.md section 2): Gaussian kernels with the median bandwidth
    instead of APIB's Laplace-like kernel with gamma = 1/HW; Frobenius-normalised kernels; the
    calibration set is `samples_per_class` per class (APIB draws 128 images); the budget is this
    project's bisection of one global lam.
    """

    name = "apib"
    response_source = "consumer"

    def __init__(self, *, gamma_ratio: float = 0.5, nonnegative: bool = False, structure: str = "embedding",
                 response: str = "class", max_iter: int = SOLVER_MAX_ITER, statistics: str = "exact",
                 block_size: int | None = None, permutations: int | None = None, seed: int = 0) -> None:
        if response != "class":
            raise PaperpruneError(f"response={response!r} applies to the class-wise criteria (classwise, sglp, "
                                  "stlp); apib's response is the consuming layer's output alone")
        super().__init__(gamma_ratio=gamma_ratio, nonnegative=nonnegative, structure=structure, max_iter=max_iter,
                         statistics=statistics, block_size=block_size, permutations=permutations, seed=seed)
        self.response_option = "output"  # as reported by `describe`

    def response(self, stats):
        return stats.output_relevance.reshape(-1, 1)


#: the responses of the class-wise criteria: the class kernels (METHOD.md section 2), or those plus APIB's
#: response (the consuming layer's output kernel) as one more column (an ablation)
RESPONSES = ("class", "class+output")


class ClasswiseCriterion(LassoCriterion):
    """Class-wise relevance (one response per class), plain lasso: no graph, no tree."""

    name = "classwise"


class SGLPCriterion(LassoCriterion):
    """sGLP-IB: graph-guided fused lasso over the class graph (gamma = gamma_ratio * lam).

    The graph comes from the class embeddings (edges where |corr| > rho, or each class's knn most
    correlated classes) or, with structure='taxonomy', from the dataset's superclasses."""

    name = "sglp"

    def __init__(self, *, gamma_ratio: float = 0.5, nonnegative: bool = False, structure: str = "embedding",
                 response: str = "class", rho: float = 0.5, knn: int | None = None,
                 max_iter: int = SOLVER_MAX_ITER, statistics: str = "exact", block_size: int | None = None,
                 permutations: int | None = None, seed: int = 0) -> None:
        super().__init__(gamma_ratio=gamma_ratio, nonnegative=nonnegative, structure=structure, response=response,
                         max_iter=max_iter, statistics=statistics, block_size=block_size, permutations=permutations,
                         seed=seed)
        self.rho, self.knn = check_graph_options(rho, knn)

    def build_structure(self):
        from .structure import class_graph_from_embeddings, class_graph_from_taxonomy

        if self.structure == "taxonomy":
            graph = class_graph_from_taxonomy(_taxonomy(self), self.embeddings.shape[0])
        else:
            graph = class_graph_from_embeddings(self.embeddings, rho=self.rho, knn=self.knn)
        self.graph = graph.to(dtype=torch.float64)  # the problems' dtype

    def solve(self, Q, R, lam, B0):
        from .lasso import solve_sglp

        return solve_sglp(Q, R, self.graph, lam, self.gamma_ratio * lam, nonnegative=self.nonnegative,
                          tol=self.solver_tol, max_iter=self.max_iter, B0=B0)

    def solution_bound(self, Q, R, lam):
        from .lasso import solution_norm_bound

        return solution_norm_bound(Q, R, lam, graph=self.graph, gamma=self.gamma_ratio * lam,
                                   nonnegative=self.nonnegative)

    def describe(self, level):
        return dict(super().describe(level), gamma=self.gamma_ratio * self.lam(level))


class STLPCriterion(LassoCriterion):
    """sTLP-IB: tree-guided group lasso over the class tree."""

    name = "stlp"

    def build_structure(self):
        from .structure import (
            ClassTree,
            class_tree_from_embeddings,
            class_tree_from_taxonomy,
        )

        if self.structure == "taxonomy":
            tree = class_tree_from_taxonomy(_taxonomy(self), self.embeddings.shape[0])
        else:
            tree = class_tree_from_embeddings(self.embeddings)
        if self.response_option == "class+output":  # the output column: a leaf under the root, weight 1 (a lasso)
            K = tree.num_classes
            tree = ClassTree(tree.groups + [[K]], torch.cat([tree.weights, tree.weights.new_ones(1)]), K + 1)
        self.tree = tree

    def solve(self, Q, R, lam, B0):
        from .lasso import solve_stlp

        return solve_stlp(Q, R, self.tree, lam, nonnegative=self.nonnegative, tol=self.solver_tol,
                          max_iter=self.max_iter, B0=B0)

    def solution_bound(self, Q, R, lam):
        from .lasso import solution_norm_bound

        return solution_norm_bound(Q, R, lam, tree=self.tree, nonnegative=self.nonnegative)


_CRITERIA = {c.name: c for c in (RandomCriterion, L1Criterion, HRankCriterion, APIBCriterion,
                                 ClasswiseCriterion, SGLPCriterion, STLPCriterion)}


def check_method(method: str) -> None:
    if method not in _CRITERIA:
        raise PaperpruneError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")


def check_graph_options(rho, knn) -> tuple[float, int | None]:
    """The class graph's edge rule (METHOD.md section 2): |corr| > rho, or knn neighbours per class."""
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0 <= rho < 1:
        raise PaperpruneError(f"rho={rho!r} must be a number in [0, 1): the |correlation| above which two "
                              "classes share a graph edge")
    if knn is not None and (isinstance(knn, bool) or not isinstance(knn, numbers.Integral) or knn < 1):
        raise PaperpruneError(f"knn={knn!r} must be a positive integer (each class's number of graph "
                              "neighbours) or None to use rho")
    return float(rho), None if knn is None else int(knn)


def check_max_iter(max_iter) -> int:
    """The lasso solver's iteration budget per solve (`lasso.SOLVER_MAX_ITER` by default): a positive integer."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise PaperpruneError(f"max_iter={max_iter!r} must be a positive integer: the lasso solver's "
                              f"iterations per solve (default {SOLVER_MAX_ITER})")
    return int(max_iter)


def criterion_options() -> set[str]:
    """The option names some criterion's constructor takes (what `create_criterion` accepts)."""
    return {name for cls in _CRITERIA.values() for name in inspect.signature(cls.__init__).parameters} - {"self"}


def create_criterion(method: str, **options) -> Criterion:
    """The criterion named `method` (one of METHODS).

    `options` are the run's shared settings (seed, gamma_ratio, structure, ...); each criterion
    takes the ones its constructor names (gamma_ratio means nothing to `l1`); a name no criterion
    takes is refused with the closest known one (`paperprune.options`).
    """
    from .options import unknown_name

    check_method(method)
    known = criterion_options()
    for name in options:
        if name not in known:
            raise unknown_name(name, known, "criterion option")
    check_graph_options(options.get("rho", 0.5), options.get("knn"))
    check_max_iter(options.get("max_iter", SOLVER_MAX_ITER))  # every method, as the graph options
    check_statistics(options.get("statistics", "exact"), options.get("block_size"), options.get("permutations"))
    cls = _CRITERIA[method]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})


def _taxonomy(criterion: LassoCriterion) -> dict[str, list[int]]:
    if not criterion.calibration_taxonomy:
        raise PaperpruneError("structure='taxonomy' but this dataset has no known class hierarchy; "
                              "use structure='embedding'")
    return criterion.calibration_taxonomy


def _conv(model: nn.Module, layer) -> nn.Module:
    """The layer's root module: a conv, or a linear layer (an MLP's hidden width)."""
    return model.get_submodule(layer.conv)
