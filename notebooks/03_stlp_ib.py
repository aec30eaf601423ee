# %% [markdown]
# # 03 - sTLP-IB: tree-guided group lasso over classes
#
# This notebook builds class trees (from the model's class embeddings, and from the known
# Fashion-MNIST taxonomy tops / footwear / other), checks the exact tree-structured proximal
# operator and the whole sTLP-IB solver against cvxpy on a trained layer, shows the group norms
# per tree node, and compares the class graph with the class tree at a matched budget, changing
# one thing at a time.
#
# **What comes from the paper and what is reconstruction.** Only the abstract of Liu et al.
# (arXiv 2502.09125) is available: the name sTLP-IB ("sparse tree-guided lasso pruning with
# Information Bottleneck"), a structured lasso over filters using class-wise relatedness. The
# class trees, their node weights, the objective (Kim & Xing's tree-guided group lasso on the
# multi-task HSIC regression of notebook 01), the tree prox (Jenatton et al., JMLR 2011) and the
# ADMM solver are this project's reconstruction (`METHOD.md` section 2).

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
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch
from scipy.cluster.hierarchy import linkage

from paperprune.lab import reporting
from paperprune.compare import compare_selections, jaccard
from paperprune.ib import class_embeddings, layer_statistics
from paperprune.lasso import solve_sglp, solve_stlp, tree_prox
from paperprune.structure import ClassGraph, ClassTree, class_tree_from_embeddings, class_tree_from_taxonomy
from paperprune.surgery import MacsPredictor
from paperprune.lab.tutorial import fashion_mnist, plot_convergence, shipped_resnet56, tutorial_layer

plt.rcParams.update({"figure.dpi": 90, "font.size": 9})
ROW_TOL = 1e-6   # a row of B with a smaller norm counts as zero (channel pruned)

# %% [markdown]
# ## Class trees
#
# The layer and calibration images are those of notebooks 01, 02 and 04: block `layer3.5` of
# the shipped Fashion-MNIST ResNet-56, 20 training images per class.
#
# **From the embeddings** (reconstruction): average-linkage agglomerative clustering of the
# class-mean embeddings with correlation distance; the node weights follow Kim & Xing (ICML
# 2010) from the normalised merge heights $h_v$: $w_v = (1 - h_v)\prod_{m \text{ ancestor}} h_m$
# for an internal node and $\prod_{m} h_m$ for a leaf. The leaf labels are coloured by the
# Fashion-MNIST superclass (below), to show where the embedding tree agrees with the taxonomy.

# %%
data = fashion_mnist(calibration_per_class=20)
info, names = data.info, data.info.class_names
model = shipped_resnet56()
layer = tutorial_layer(model)
emb = class_embeddings(model, data.images, data.labels, 10)
fig = reporting.plot_class_tree(linkage(emb.double().numpy(), method="average", metric="correlation"), names)
superclass_of = {c: group for group, members in info.taxonomy.items() for c in members}
colour = dict(zip(info.taxonomy, ("tab:blue", "tab:orange", "tab:green")))
for tick in fig.axes[0].get_xticklabels():
    tick.set_color(colour[superclass_of[names.index(tick.get_text())]])
    tick.set_fontsize(8)
    tick.set_rotation(90)
fig.axes[0].legend(handles=[Patch(color=c, label=g) for g, c in colour.items()], fontsize=7,
                   title="superclass (label colour)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.set_dpi(90)
display(fig)
plt.close(fig)
tree = class_tree_from_embeddings(emb)

# %% [markdown]
# **From the taxonomy**: Fashion-MNIST's three superclasses. Leaves weigh 1/2 under a
# superclass, superclasses 1/2, the root 0 (Kim & Xing's formula with fixed heights 1/2 and 1;
# a choice of this project).

# %%
# NBVAL_CHECK_OUTPUT
taxonomy_tree = class_tree_from_taxonomy(info.taxonomy, 10)
print("taxonomy:", info.taxonomy)
for group, w in zip(taxonomy_tree.groups, taxonomy_tree.weights.tolist()):
    print(f"  w = {w:.3g}  {[names[c] for c in group]}")
root_weight = {name: float(t.weights[[len(g) for g in t.groups].index(10)]) for name, t in
               (("embedding", tree), ("taxonomy", taxonomy_tree))}
print(f"embedding tree: {tree.num_nodes} nodes; root weights: {root_weight}")
assert root_weight == {"embedding": 0.0, "taxonomy": 0.0}

# %%
fig = reporting.plot_class_tree(taxonomy_tree, names)
fig.set_dpi(90)
display(fig)
plt.close(fig)

# %% [markdown]
# ## The objective and the tree prox
#
# sTLP-IB solves, over signed $B \in \mathbb R^{C\times K}$ (the package's default;
# `nonnegative=True` adds $B \ge 0$),
#
# $$F(B) = \tfrac12\,\mathrm{tr}(B^\top Q B) - \mathrm{tr}(R^\top B)
# + \lambda \sum_k \sum_{v} w_v\, \|B_{k, G_v}\|_2 ,$$
#
# where $G_v$ is the set of classes under tree node $v$ (leaves and root included). A channel
# can be switched off for a single class (a leaf group) or for a whole superclass (an internal
# node). **The root weighs 0 in both trees above**, so no single group switches a channel off
# for every class at once: a channel is pruned when each of the root's children (the three
# superclasses of the taxonomy) has switched it off. This is measured on the trained layer
# below.
#
# The penalty's proximal operator is exact for a tree (Jenatton et al., JMLR 2011): group
# soft-thresholding $x_G \leftarrow x_G \max(0, 1 - t\,w_G/\|x_G\|)$ applied from the leaves to
# the root, on signed rows; with $B \ge 0$ it is that operator applied to $\max(x, 0)$. On a
# two-level tree over four classes, against cvxpy's solution of the prox problem:

# %%
small_tree = ClassTree(groups=[[0], [1], [2], [3], [0, 1], [2, 3], [0, 1, 2, 3]],
                       weights=[0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.5])
x = torch.tensor([[1.2, -0.9, 0.35, -0.2]], dtype=torch.float64)
t = 0.4


def prox_cvxpy(x, tree, t, nonneg):
    b = cp.Variable(x.shape[1], nonneg=nonneg)
    penalty = sum(w * cp.norm(b[g], 2) for g, w in zip(tree.groups, tree.weights.tolist()))
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(b - x[0].numpy()) + t * penalty)).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return b.value


signed = tree_prox(x, small_tree, t, nonnegative=False)[0].numpy()
nonneg = tree_prox(x, small_tree, t, nonnegative=True)[0].numpy()
assert np.allclose(signed, prox_cvxpy(x, small_tree, t, nonneg=False), atol=1e-6)
assert np.allclose(nonneg, prox_cvxpy(x, small_tree, t, nonneg=True), atol=1e-6)
assert signed[2] == signed[3] == 0 and abs(x[0, 2]) > t * 0.5        # class 2 alone would survive its leaf
assert signed[1] < 0 and nonneg[1] == 0 and np.abs(signed - nonneg).max() > 0.05

# %%
# NBVAL_CHECK_OUTPUT
print("x                         ", np.round(x[0].numpy(), 6))
print("prox (signed, the default)", np.round(signed, 6) + 0.0)  # + 0.0: no "-0."
print("prox (B >= 0, nonnegative)", np.round(nonneg, 6))

# %%
fig, ax = plt.subplots(figsize=(5.5, 3))
pos = np.arange(4)
ax.bar(pos - 0.25, x[0].numpy(), 0.25, label="x", color="lightgray")
ax.bar(pos, signed, 0.25, label="tree prox (signed)")
ax.bar(pos + 0.25, nonneg, 0.25, label="tree prox, B >= 0")
ax.axhline(0, color="black", lw=0.5)
ax.set_xticks(pos, ["class 0", "class 1", "class 2", "class 3"])
ax.set_ylabel("coefficient")
ax.set_title("groups {0,1} and {2,3} under one root, t = 0.4")
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# Signed, classes 0 and 1 survive together (shrunk, class 1 keeping its negative sign); the
# weaker group {2, 3} is set to zero as a whole by its internal node, although class 2 alone
# would have survived its own leaf threshold. That is the structured sparsity sTLP-IB relies
# on. With $B \ge 0$ class 1's negative entry is clipped to 0 first, so group {0, 1} holds
# class 0 alone and is shrunk further by both its thresholds: the two operators give different
# answers as soon as an entry is negative.
#
# ## The whole solver on a trained layer, against cvxpy
#
# `solve_stlp` is ADMM: an exact B-update through the eigendecomposition of $Q$ and the exact
# tree prox as the other update, on a working set of channels. Below, the same problem written
# in cvxpy from the tree's groups and weights, on the trained layer with the taxonomy tree,
# signed and with $B \ge 0$: same objective to a relative $10^{-5}$, same kept channels.

# %%
st = layer_statistics(model, [layer], data.images, data.labels, 10, dtype=torch.float64)[layer.name]
Q, R = st.redundancy, st.relevance
lam = 0.1 * float(R.max())


def stlp_cvxpy(Q, R, tree, lam, nonneg):
    evals, evecs = np.linalg.eigh(Q)
    root = np.sqrt(np.clip(evals, 0, None))[:, None] * evecs.T                  # Q = root^T root
    B = cp.Variable(R.shape, nonneg=nonneg)
    penalty = sum(w * cp.sum(cp.norm(B[:, g], 2, axis=1)) for g, w in zip(tree.groups, tree.weights.tolist()) if w)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(root @ B) - cp.sum(cp.multiply(R, B)) + lam * penalty))
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return problem.value, B.value


checks = {}
for nonnegative in (False, True):
    ours = solve_stlp(Q, R, taxonomy_tree, lam, nonnegative=nonnegative, tol=1e-10, max_iter=20000)
    value, B_ref = stlp_cvxpy(Q.numpy(), R.numpy(), taxonomy_tree, lam, nonnegative)
    ours_kept = (ours.B.norm(dim=1) > ROW_TOL).numpy()
    ref_kept = np.linalg.norm(B_ref, axis=1) > ROW_TOL
    gap = abs(ours.objective - value) / abs(value)
    assert ours.converged and gap < 1e-5, (nonnegative, gap)
    assert (ours_kept == ref_kept).all(), (nonnegative, np.nonzero(ours_kept != ref_kept))
    checks[nonnegative] = (ours.objective, int(ours_kept.sum()))
sol = solve_stlp(Q, R, taxonomy_tree, lam, tol=1e-10, max_iter=20000)

# %%
# NBVAL_CHECK_OUTPUT
for nonnegative, (objective, n_kept) in checks.items():
    print(f"{'B >= 0' if nonnegative else 'signed'}: package and cvxpy agree, objective {objective:.5f}, "
          f"both keep {n_kept} of {Q.shape[0]} channels")

# %%
fig = plot_convergence(lambda m: solve_stlp(Q, R, taxonomy_tree, lam, tol=1e-14, max_iter=m), sol.objective,
                       "sTLP-IB solver on one trained layer", "max(primal, dual, KKT) residual")

# %% [markdown]
# ## Group norms per tree node
#
# $\|B_{k,G_v}\|_2$ for every channel $k$ (rows, by their norm) and node $v$ (columns: the ten
# leaves, the three superclasses, the root), on a log colour scale (white: exactly zero). A
# zero at a superclass node means the channel is switched off for that whole superclass. The
# leaf columns are grouped by superclass, in the order of the superclass columns.
#
# That a channel is kept exactly when at least one superclass group is non-zero needs no
# measurement: the superclasses partition the classes, so it holds for any root weight. What
# can be measured is how often the tree switches a kept channel off for a whole superclass but
# not for all, and whether the plain class-wise $\ell_1$ lasso (no tree, the same $\lambda$)
# does the same without the superclass groups.

# %%
mask = taxonomy_tree.mask.double()                       # (V, K) node membership
superclasses = list(info.taxonomy)
leaf_order = [c for group in superclasses for c in info.taxonomy[group]]
columns = leaf_order + list(range(10, 10 + len(superclasses))) + [10 + len(superclasses)]


def superclass_profile(B):
    """Kept channels by the number of superclasses they are active in (1, 2, 3)."""
    on = torch.sqrt((B ** 2) @ mask[10:-1].T) > ROW_TOL                # (C, 3)
    kept_rows = B.norm(dim=1) > ROW_TOL
    return np.bincount(on[kept_rows].sum(1).numpy(), minlength=4)[1:].tolist(), on


norms = torch.sqrt((sol.B ** 2) @ mask.T)                 # (C, V)
node_names = names + superclasses + ["root"]
order = torch.argsort(norms[:, -1], descending=True)
kept = sol.B.norm(dim=1) > ROW_TOL
tree_profile, superclass_on = superclass_profile(sol.B)
no_edges = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                      torch.zeros(0, dtype=torch.float64))
plain = solve_sglp(Q, R, no_edges, lam, 0.0, tol=1e-10, max_iter=20000).B
plain_profile, _ = superclass_profile(plain)
assert sum(tree_profile[:2]) > 0          # some kept channels are off for a whole superclass, not for all
shown = norms[order][:, columns].numpy()
fig, ax = plt.subplots(figsize=(6.5, 4.2))
im = ax.imshow(np.where(shown > ROW_TOL, shown, np.nan), cmap="viridis", aspect="auto",
               norm=LogNorm(vmin=max(ROW_TOL, float(shown[shown > ROW_TOL].min())), vmax=float(shown.max())))
ax.set_xticks(range(len(columns)), [node_names[v] for v in columns], rotation=90)
for edge in np.cumsum([len(info.taxonomy[g]) for g in superclasses])[:-1]:
    ax.axvline(edge - 0.5, color="gray", lw=0.6, ls=":")
ax.axvline(9.5, color="black", lw=0.8)
ax.axvline(12.5, color="black", lw=0.8)
ax.set_ylabel("channel, by root norm (high to low)")
ax.set_title("||B_k,G_v|| per tree node (white: zero)")
fig.colorbar(im, fraction=0.046, label="group norm (log scale)")
fig.tight_layout()

# %%
# NBVAL_CHECK_OUTPUT
print(f"kept channels: {int(kept.sum())} of {Q.shape[0]}")
print("kept channels active per superclass:", dict(zip(superclasses, superclass_on.sum(0).tolist())))
print("kept channels active in 1 / 2 / 3 superclasses, tree:      ", tree_profile)
print("the same for the plain class-wise lasso at the same lambda:", plain_profile)

# %% [markdown]
# Most kept channels (40 of 49) are active in one superclass only, but the plain lasso, with no
# superclass groups, gives almost the same profile (41, 7 and 2 of 50 channels). On this layer
# the class-wise relevance is already concentrated enough for the $\ell_1$ leaves alone to
# switch channels off superclass by superclass; the tree's groups add little to it.

# %% [markdown]
# ## Graph against tree at a matched budget, one change at a time
#
# Each criterion keeps 16 of the layer's 64 channels (only this layer is pruned; the MACs
# budget is what removing 48 of its channels saves, and the budget tolerance is a tenth of one
# channel's share). Then each pair below differs in one thing only:
#
# * no structure against a graph, or against a tree (same class embeddings);
# * graph against tree, with the structure built from the same source (embeddings, or the
#   taxonomy);
# * the same kind of structure built from the embeddings or from the taxonomy.
#
# (`structure="taxonomy"` gives sGLP-IB a graph whose edges join the classes of one superclass.)

# %%
predictor = MacsPredictor(model, [layer], (1, 32, 32))
full = predictor({layer.name: 64})[0]
target = 1 - predictor({layer.name: 16})[0] / full
tolerance = (full - predictor({layer.name: 63})[0]) / full / 10
kept_by = {}
for structure in ("embedding", "taxonomy"):
    cmp = compare_selections(model, [(data.images, data.labels)], methods=["classwise", "sglp", "stlp"],
                             flops_reduction=target, layers=[layer], samples_per_class=20, omega=1,
                             tolerance=tolerance, structure=structure, taxonomy=info.taxonomy, progress=False)
    for method in cmp.methods:
        kept_by[(method, structure)] = set(cmp.kept[method][layer.name])
assert kept_by[("classwise", "embedding")] == kept_by[("classwise", "taxonomy")]   # no structure: unaffected
assert all(len(k) == 16 for k in kept_by.values())
pairs = [(("classwise", "embedding"), ("sglp", "embedding"), "adds the graph"),
         (("classwise", "embedding"), ("stlp", "embedding"), "adds the tree"),
         (("classwise", "taxonomy"), ("stlp", "taxonomy"), "adds the taxonomy tree"),
         (("sglp", "embedding"), ("stlp", "embedding"), "graph -> tree (embeddings)"),
         (("sglp", "taxonomy"), ("stlp", "taxonomy"), "graph -> tree (taxonomy)"),
         (("sglp", "embedding"), ("sglp", "taxonomy"), "embedding -> taxonomy graph"),
         (("stlp", "embedding"), ("stlp", "taxonomy"), "embedding -> taxonomy tree")]

# %%
# NBVAL_CHECK_OUTPUT
label = {"classwise": "class-wise", "sglp": "sGLP-IB", "stlp": "sTLP-IB"}
for a, b, change in pairs:
    shared = len(kept_by[a] & kept_by[b])
    print(f"{label[a[0]] + ' (' + a[1] + ')':>24} vs {label[b[0]] + ' (' + b[1] + ')':<24} {change:<28} "
          f"share {shared:>2} of 16, Jaccard {jaccard(kept_by[a], kept_by[b]):.2f}")

# %% [markdown]
# The table says how many of the 16 channels each single change moves. The tree, built from
# either source, moves none: sTLP-IB keeps exactly the plain class-wise lasso's 16 channels
# (Jaccard 1.00), as the superclass profile above foreshadowed. On this layer at this budget the
# tree has no measured effect on the selection; the graph moves 3 of the 16 (from the
# embeddings) and sGLP-IB and sTLP-IB on the taxonomy differ in 5. Notebook 04 sets these
# against the difference between APIB's single class-agnostic response and any class-wise
# lasso. All of this is one calibration draw on one layer; whether the channels a structure
# moves matter for accuracy, over seeds and whole networks, is in `05_does_it_pay`.
