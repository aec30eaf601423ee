# %% [markdown]
# # 02 - sGLP-IB: graph-guided fused lasso over classes
#
# This notebook builds the class graph of a trained model, writes out the sGLP-IB objective,
# solves it on one trained layer with the package's solver and checks the answer with an
# independent convex solver (cvxpy) whose fusion terms are written here from the graph's edges
# and signs. It then measures what the fusion does: to classes joined by a positive edge, to a
# negative edge with signed coefficients, and to the same edge under `nonnegative=True`.
#
# **What comes from the paper and what is reconstruction.** Only the abstract of Liu et al.
# (arXiv 2502.09125) is available: the name sGLP-IB ("sparse graph-structured lasso pruning
# with Information Bottleneck"), a structured lasso over filters using class-wise relatedness.
# The class graph, the objective (Kim & Xing's graph-guided fused lasso on the multi-task HSIC
# regression of notebook 01) and the ADMM solver are this project's reconstruction
# (`METHOD.md` section 2).

# %%
# %matplotlib inline
import warnings

with warnings.catch_warnings():  # tqdm's notice that ipywidgets is absent (progress bars are off here)
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.colors import SymLogNorm
from matplotlib.lines import Line2D

from paperprune.lab import reporting
from paperprune.ib import class_embeddings, layer_statistics
from paperprune.lasso import lasso_path, solve_sglp
from paperprune.structure import ClassGraph, class_graph_from_embeddings
from paperprune.lab.tutorial import fashion_mnist, plot_convergence, shipped_resnet56, tutorial_layer

plt.rcParams.update({"figure.dpi": 90, "font.size": 9})
ROW_TOL = 1e-6   # a row of B with a smaller norm counts as zero (channel pruned)

# %% [markdown]
# ## The class graph
#
# The layer and calibration images are those of notebooks 01 and 04: block `layer3.5` of the
# shipped Fashion-MNIST ResNet-56, 20 training images per class. The classes' mean embeddings
# (the input of the classifier) are correlated across embedding dimensions; an edge $(c, d)$
# joins classes with $|\mathrm{corr}| > \rho = 0.5$, with weight $w_{cd} = |\mathrm{corr}|$ and
# sign $s_{cd} = \mathrm{sign}(\mathrm{corr})$ (reconstruction after Kim & Xing's
# graph-guided fused lasso).

# %%
data = fashion_mnist(calibration_per_class=20)
names = data.info.class_names
model = shipped_resnet56()
layer = tutorial_layer(model)
emb = class_embeddings(model, data.images, data.labels, 10)
graph = class_graph_from_embeddings(emb, rho=0.5)
fig = reporting.plot_class_graph(graph, names)
ax = fig.axes[0]
widths = ax.collections[0].get_linewidths()                  # the drawn width of each positive edge
lo, hi = int(np.argmin(graph.weights)), int(np.argmax(graph.weights))
ax.legend([Line2D([], [], color="tab:blue", lw=widths[i]) for i in (lo, hi)],
          [f"|corr| = {float(graph.weights[i]):.2f}" for i in (lo, hi)], loc="lower center",
          bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7, title="edge width", title_fontsize=7)
fig.set_dpi(90)
display(fig)
plt.close(fig)

# %%
# NBVAL_CHECK_OUTPUT
for (c, d), w, s in zip(graph.edges.tolist(), graph.weights.tolist(), graph.signs.tolist()):
    print(f"{names[c]:>12} -- {names[d]:<12} w = {w:.2f}  sign {int(s):+d}")

# %% [markdown]
# ## The objective
#
# With the layer's redundancy $Q$ and class-wise relevance $R$ (notebook 01), sGLP-IB solves,
# over signed $B \in \mathbb R^{C\times K}$ (the package's default),
#
# $$F(B) = \tfrac12\,\mathrm{tr}(B^\top Q B) - \mathrm{tr}(R^\top B)
# + \lambda \sum_{k,c} |B_{kc}|
# + \gamma \sum_{(c,d)\in E} w_{cd} \sum_k |B_{kc} - s_{cd} B_{kd}|.$$
#
# The $\ell_1$ term makes $B$ sparse; the fusion term pulls channel $k$'s coefficients for two
# linked classes together (positive edge) or towards opposite values (negative edge). Channel
# $k$ is kept iff row $B_{k\cdot}$ is non-zero; its row norm is its score. In the pruning
# pipeline $\gamma = 0.5\,\lambda$ and one $\lambda$ is shared by all layers (notebook 00).
#
# The fusion term has no closed-form prox; `paperprune.lasso.solve_sglp` runs ADMM with an
# exact B-update on a working set of channels (Chen et al.'s smoothing proximal gradient is the
# classical alternative). It stops when the relative dual residual is below `tol`, the relative
# primal residual below `tol / 10`, and a bound on the KKT violation of the channels held at
# zero below `tol`.

# %%
st = layer_statistics(model, [layer], data.images, data.labels, 10, dtype=torch.float64)[layer.name]
Q, R = st.redundancy, st.relevance
lam = 0.1 * float(R.max())
gamma = 0.5 * lam
sol = solve_sglp(Q, R, graph, lam, gamma, tol=1e-10, max_iter=20000)
kept = sol.B.norm(dim=1) > ROW_TOL
assert sol.converged
print(f"C = {Q.shape[0]} channels, K = {R.shape[1]} classes, lam = {lam:.4g}, gamma = {gamma:.4g}")
print(f"converged after {sol.iterations} iterations (primal residual {sol.certificate['primal_residual']:.1e}, "
      f"dual {sol.certificate['dual_residual']:.1e}); objective {sol.objective:.8g}; "
      f"kept {int(kept.sum())} of {Q.shape[0]}")

# %% [markdown]
# ## An independent check: the same problem in cvxpy
#
# Written here from the definition, not from the package: $\tfrac12 \mathrm{tr}(B^\top Q B)$ as
# $\tfrac12\|Q^{1/2}B\|_F^2$, and one fusion term per edge built from that edge's two classes,
# weight and sign. Clarabel (an interior-point solver) must reach the same objective to a
# relative $10^{-5}$ and keep the same channels.

# %%
def sglp_cvxpy(Q, R, edges, weights, signs, lam, gamma):
    evals, evecs = np.linalg.eigh(Q)
    root = np.sqrt(np.clip(evals, 0, None))[:, None] * evecs.T                   # Q = root^T root
    B = cp.Variable(R.shape)
    fusion = sum(w * cp.sum(cp.abs(B[:, c] - s * B[:, d])) for (c, d), w, s in zip(edges, weights, signs))
    objective = 0.5 * cp.sum_squares(root @ B) - cp.sum(cp.multiply(R, B)) + lam * cp.sum(cp.abs(B)) \
        + gamma * fusion
    problem = cp.Problem(cp.Minimize(objective))
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return problem.value, B.value


edges = graph.edges.tolist()
ref_value, ref_B = sglp_cvxpy(Q.numpy(), R.numpy(), edges, graph.weights.tolist(), graph.signs.tolist(), lam, gamma)
gap = abs(sol.objective - ref_value) / abs(ref_value)
ref_kept = np.linalg.norm(ref_B, axis=1) > ROW_TOL
assert gap < 1e-5, gap
assert (ref_kept == kept.numpy()).all(), np.nonzero(ref_kept != kept.numpy())

# %%
# NBVAL_CHECK_OUTPUT
print(f"package (ADMM) and cvxpy (Clarabel) objectives agree to a relative 1e-5: {sol.objective:.5f}")
print(f"both keep the same {int(kept.sum())} channels of {len(kept)}")

# %% [markdown]
# ## Convergence
#
# `solve_sglp` returns the final iterate, not a history, so we rerun it with an increasing
# iteration budget (each run from zero) and plot the objective gap to the converged value.

# %%
fig = plot_convergence(lambda m: solve_sglp(Q, R, graph, lam, gamma, tol=1e-12, max_iter=m), sol.objective,
                       "sGLP-IB solver on one trained layer", "max(primal, dual) residual")

# %% [markdown]
# ## What the fusion does to classes joined by a positive edge
#
# A measured claim, not an asserted one: for every pair of classes, the total difference
# $\sum_k |B_{kc} - B_{kd}|$ between their columns, with the fusion ($\gamma = 0.5\lambda$) and
# without it ($\gamma = 0$: the plain class-wise lasso), at the same $\lambda$.

# %%
plain = solve_sglp(Q, R, graph, lam, 0.0, tol=1e-10, max_iter=20000).B
linked = {tuple(e) for e in edges}


def column_gap(B, c, d):
    return float((B[:, c] - B[:, d]).abs().sum())


rows = [(c, d, (c, d) in linked, column_gap(plain, c, d), column_gap(sol.B, c, d))
        for c in range(10) for d in range(c + 1, 10)]
edge_ratio = np.mean([fused / free for c, d, e, free, fused in rows if e])
other_ratio = np.mean([fused / free for c, d, e, free, fused in rows if not e])
assert edge_ratio < other_ratio

# %%
# NBVAL_CHECK_OUTPUT
print(f"mean of sum_k |B_kc - B_kd| with fusion / without, over the {len(linked)} linked pairs: {edge_ratio:.2f}")
print(f"the same over the {len(rows) - len(linked)} pairs without an edge:                 {other_ratio:.2f}")

# %% [markdown]
# ## A negative edge: signed coefficients against `nonnegative=True`
#
# The graph above has only positive edges (the class-mean embeddings of a ReLU network rarely
# anti-correlate; the most negative correlation is printed below), so we add one edge by hand,
# between *Trouser* and *Sneaker*, with weight 1. With signed $B$ a negative edge's term
# $|B_{kc} + B_{kd}|$ can be lowered in two ways: by shrinking both coefficients (plain
# shrinkage) or by giving them opposite signs. A fall of $\sum_k |B_{kc} + B_{kd}|$ alone
# cannot tell the two apart, so the measure is its ratio to the columns' total size
# $\sum_k (|B_{kc}| + |B_{kd}|)$: plain shrinkage leaves that ratio where it is, a pull towards
# opposite values lowers it. The control is the same edge made positive, whose term
# $|B_{kc} - B_{kd}|$ pulls the columns towards **equal** values. Both at the same $\lambda$, for
# growing $\gamma$.

# %%
corr = np.corrcoef(emb.double().numpy())
print(f"most negative correlation between two classes' mean embeddings: {corr.min():.2f}")
c, d = names.index("Trouser"), names.index("Sneaker")


def one_edge(sign):
    return ClassGraph(torch.tensor([[c, d]]), torch.tensor([1.0], dtype=torch.float64),
                      torch.tensor([sign], dtype=torch.float64))


ratios = [0.0, 0.25, 0.5, 1.0, 2.0]
pair = {}                                          # (sign, gamma / lambda) -> the two columns of B
for sign in (-1.0, 1.0):
    for r in ratios:
        B = solve_sglp(Q, R, one_edge(sign), lam, r * lam, tol=1e-10, max_iter=20000).B
        pair[sign, r] = (B[:, c], B[:, d])


def pair_measures(bc, bd):
    size = float(bc.abs().sum() + bd.abs().sum())
    both = (bc.abs() > ROW_TOL) & (bd.abs() > ROW_TOL)
    return {"sum": float((bc + bd).abs().sum()) / size, "difference": float((bc - bd).abs().sum()) / size,
            "size": size, "opposite": int((both & (bc * bd < 0)).sum()), "same": int((both & (bc * bd > 0)).sum())}


measures = {key: pair_measures(*cols) for key, cols in pair.items()}
negative_ratio = [measures[-1.0, r]["sum"] for r in ratios]
positive_ratio = [measures[1.0, r]["sum"] for r in ratios]
size_kept = measures[-1.0, 2.0]["size"] / measures[-1.0, 0.0]["size"]
assert negative_ratio[-1] < negative_ratio[0] - 0.2 and positive_ratio[-1] >= positive_ratio[0] - 1e-9
assert measures[-1.0, 2.0]["opposite"] > measures[-1.0, 0.0]["opposite"] and measures[1.0, 2.0]["opposite"] == 0

# %%
# NBVAL_CHECK_OUTPUT
print("sum_k |B_kc + B_kd| / sum_k (|B_kc| + |B_kd|), c = Trouser, d = Sneaker, as gamma/lambda grows:")
for sign in (-1.0, 1.0):
    print(f"  {'negative' if sign < 0 else 'positive'} edge:",
          "  ".join(f"{r:g}: {measures[sign, r]['sum']:.2f}" for r in ratios))
print(f"negative edge, gamma = 2 lambda: the columns keep {100 * size_kept:.0f}% of their total size at gamma = 0")

# %%
print(f"{'edge':>8} {'gamma/lam':>9} {'size':>6} {'|c+d|/size':>10} {'|c-d|/size':>10} "
      f"{'opposite signs':>14} {'same signs':>10}")
for (sign, r), m in measures.items():
    print(f"{'negative' if sign < 0 else 'positive':>8} {r:>9g} {m['size']:>6.3f} {m['sum']:>10.2f} "
          f"{m['difference']:>10.2f} {m['opposite']:>14} {m['same']:>10}")

# %% [markdown]
# Without the edge ($\gamma = 0$) the two columns share almost no channel, so the sum and the
# difference are nearly the columns' whole size. With the negative edge the ratio falls from
# 0.91 to 0.51 while the columns keep 86% of their size, and channels where the two
# coefficients have opposite signs appear (table above): the pull is towards opposite values,
# not mainly shrinkage. The positive edge, at the same weights, moves the ratio the other way
# and makes signs agree.
#
# With $B \ge 0$ no coefficient can be negative, and the negative edge's term is
# $B_{kc} + B_{kd}$, a linear term: the problem is exactly the one without the edge and with
# $\gamma w$ subtracted from both classes' relevance, i.e. **plain extra shrinkage** of those two
# columns. Checked by solving both:

# %%
g = 0.5 * lam
no_edge = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                     torch.zeros(0, dtype=torch.float64))
with_edge = solve_sglp(Q, R, one_edge(-1.0), lam, g, nonnegative=True, tol=1e-10, max_iter=20000).B
shifted = R.clone()
shifted[:, [c, d]] -= g * 1.0
shrunk = solve_sglp(Q, shifted, no_edge, lam, 0.0, nonnegative=True, tol=1e-10, max_iter=20000).B
difference = float((with_edge - shrunk).abs().max())
assert difference < 1e-6, difference
print(f"B >= 0: largest difference between the negative edge's solution and the edge-free one with "
      f"relevance lowered by gamma*w: {difference:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
print("B >= 0, negative edge equals the edge-free problem with lowered relevance (difference below 1e-6):",
      difference < 1e-6)

# %% [markdown]
# ## The solution on the trained layer
#
# $B$ (channels x classes) at $\lambda = 0.1\max R$, $\gamma = 0.5\lambda$, channels ordered by
# their score $\|B_{k\cdot}\|$; on the right, the score of each kept channel (blue, log scale)
# and a grey band over the pruned ones (score exactly 0, which a log axis cannot show). Classes
# are ordered so that linked ones sit together (tops, then footwear, then the rest). The
# non-zero coefficients span about three orders of magnitude (printed below the figure), so the
# colour scale is a signed log, linear below $10^{-3}$.

# %%
class_order = [0, 2, 3, 4, 6, 5, 7, 9, 1, 8]
scores = sol.B.norm(dim=1)
order = torch.argsort(scores, descending=True)
fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), gridspec_kw={"width_ratios": [2.2, 1]}, sharey=True)
shown = sol.B[order][:, class_order].numpy()
limit = float(np.abs(shown).max())
linear = 1e-3                                                        # |B| below this: the linear part of the scale
im = axes[0].imshow(shown, cmap="RdBu_r", aspect="auto", norm=SymLogNorm(linthresh=linear, vmin=-limit, vmax=limit))
axes[0].set_xticks(range(10), [names[i] for i in class_order], rotation=90)
axes[0].set_ylabel("channel, by score (high to low)")
axes[0].set_title("B (sGLP-IB)")
fig.colorbar(im, ax=axes[0], fraction=0.046, label=f"coefficient (signed log scale, linear below {linear:g})")
position = np.arange(len(order))
is_kept = kept[order].numpy()
axes[1].barh(position[is_kept], scores[order].numpy()[is_kept], color="tab:blue", label="kept: score")
axes[1].set_xscale("log")
first_pruned = int(is_kept.sum())                                     # rows are sorted by score: pruned ones last
axes[1].axhspan(first_pruned - 0.5, len(order) - 0.5, color="0.85", label="pruned: score exactly 0")
axes[1].set_xlabel("score ||B_k.|| (log scale)")
axes[1].set_title(f"kept: {int(kept.sum())}, pruned: {int((~kept).sum())}")
axes[1].legend(fontsize=7, loc="lower right")
fig.tight_layout()

# %%
nonzero = np.abs(shown[np.abs(shown) > ROW_TOL])
print(f"coefficients above {ROW_TOL:g} in size: {nonzero.size} of {shown.size}; |B| from {nonzero.min():.1e} to "
      f"{nonzero.max():.2f}, median {np.median(nonzero):.1e}; below {linear:g}: {int((nonzero < linear).sum())}")
assert (~is_kept[:first_pruned]).sum() == 0 and is_kept[first_pruned:].sum() == 0

# %% [markdown]
# ## Along the lambda path
#
# Larger $\lambda$ empties more rows. `lasso_path` solves a decreasing sequence of $\lambda$
# with warm starts; the axis is logarithmic. With signed coefficients the support grows to every
# live channel as $\lambda \to 0$, so one $\lambda$ reaches any budget; the curves for three
# ratios $\gamma/\lambda$ show how much the fusion changes how many channels a $\lambda$ keeps.

# %%
lams = list(np.geomspace(2 * float(R.max()), 1e-3 * float(R.max()), 25))
fig, ax = plt.subplots(figsize=(5.5, 3.4))
for ratio in (0.0, 0.5, 2.0):
    path = lasso_path(lambda lam_, B0: solve_sglp(Q, R, graph, lam_, ratio * lam_, tol=1e-8, B0=B0), lams)
    ax.step(lams, [int((r.B.norm(dim=1) > ROW_TOL).sum()) for r in path], where="post",
            label=f"gamma = {ratio:g} lambda")
ax.set_xscale("log")
ax.set_xlabel("lambda (log scale)")
ax.set_ylabel(f"channels kept (of {Q.shape[0]})")
ax.set_title("sGLP-IB on layer3.5.conv1 along the lambda path")
ax.legend()
fig.tight_layout()

# %% [markdown]
# Everything above is one calibration draw on one layer. What the fusion does to accuracy after
# pruning a whole network, over seeds and against class-agnostic criteria, is in
# `05_does_it_pay`.
