# %% [markdown]
# # 01 - From the Information Bottleneck to a multi-task HSIC lasso
#
# The abstract says the two schemes are structured lassos "guided by Information Bottleneck
# theory". This notebook follows the chain of ideas this project uses to make that concrete
# (`METHOD.md` section 2), and keeps two kinds of statement apart:
#
# - **algebra and code, checked here by asserts that can fail**: the HSIC estimator, the
#   channel kernels against a kernel written from scratch in this notebook, the statistics Q
#   and R against those kernels, and the identity
#   $f(B) = \tfrac12 \sum_c \|\mathrm{vec}\,\bar L_c - \sum_k B_{kc}\,\mathrm{vec}\,\bar K_k\|^2
#   = \tfrac12 \mathrm{tr}(B^\top Q B) - \mathrm{tr}(R^\top B) + \text{const}$;
# - **the IB reading, a heuristic that no number checks**: that HSIC may stand in for mutual
#   information, and what each term of $f$ then means.
#
# **What comes from the paper and what is reconstruction.** Only the abstract of Liu et al.
# (arXiv 2502.09125) is available: the names sGLP-IB and sTLP-IB, that they are structured
# lassos over filters "guided by Information Bottleneck theory" to "retain statistical
# information before and after pruning", using class-wise relatedness, and the headline numbers.
# The HSIC statistics, the class-wise kernels and the objective are this project's
# reconstruction from the lineage (APIB, Guo et al. ICCV 2023; HSIC Lasso, Yamada et al. 2014;
# the HSIC bottleneck, Ma et al. AAAI 2020).

# %%
# %matplotlib inline
import warnings

with warnings.catch_warnings():  # tqdm's notice that ipywidgets is absent (progress bars are off here)
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform

from paperprune.lab.data import DeviceLoader, class_balanced_batch, load_tensors
from paperprune.ib import channel_features, channel_kernels, hsic, layer_statistics, normalized_hsic
from paperprune.lasso import sglp_objective, solve_sglp
from paperprune.structure import ClassGraph
from paperprune.lab.tutorial import fashion_mnist, shipped_resnet56, tutorial_layer

plt.rcParams.update({"figure.dpi": 90, "font.size": 9})
NO_EDGES = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                      torch.zeros(0, dtype=torch.float64))

# %% [markdown]
# ## 1. The Information Bottleneck and the HSIC bottleneck (a heuristic)
#
# For an input $X$, a label $Y$ and a representation $T$ (here: the channels a layer keeps),
# the Information Bottleneck (Tishby et al.) asks for
#
# $$\min_T \; I(X;T) - \beta\, I(T;Y),$$
#
# a representation that forgets as much of the input as it can (compression) while keeping
# what predicts the label (relevance). Mutual information between high-dimensional feature maps
# is hard to estimate. The *HSIC bottleneck* (Ma, Lewis & Kleijn, AAAI 2020) replaces both
# terms by the Hilbert-Schmidt Independence Criterion,
#
# $$\min_T \; \mathrm{HSIC}(X,T) - \beta\, \mathrm{HSIC}(T,Y), \qquad
# \mathrm{HSIC}(U,V) \approx \frac{1}{(N-1)^2}\,\mathrm{tr}(K_U H K_V H),$$
#
# with Gram matrices $K_U, K_V$ of characteristic kernels (Gaussian here) over $N$ samples and
# the centring matrix $H = I - \mathbf 1\mathbf 1^\top/N$. HSIC is zero iff $U$ and $V$ are
# independent (in the population limit), so it measures dependence of any kind. Replacing
# mutual information by HSIC is a substitution, not a derivation: nothing below checks it.
#
# ## 2. The estimator on dependent and independent data
#
# $y = x^2 + 0.3\,\varepsilon$ depends on $x$, but not linearly: for a symmetric $x$ its
# population correlation with $x$ is zero. $y'$ is drawn independently. As $N$ grows the biased
# estimate for the independent pair decays like $1/N$, the dependent one settles at a positive
# value.

# %%
sizes = [25, 50, 100, 200, 400, 800]
gen = torch.Generator().manual_seed(0)
curves = {"dependent": [], "independent": []}
for n in sizes:
    runs = {"dependent": [], "independent": []}
    for _ in range(5):
        x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        y = x ** 2 + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        y_ind = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        runs["dependent"].append(float(hsic(x, y)))
        runs["independent"].append(float(hsic(x, y_ind)))
    for key in curves:
        curves[key].append(np.mean(runs[key]))
fig, ax = plt.subplots(figsize=(5, 3.4))
for key, marker in (("dependent", "o"), ("independent", "s")):
    ax.loglog(sizes, curves[key], marker=marker, label=key)
ax.loglog(sizes, curves["independent"][0] * sizes[0] / np.array(sizes), "k:", lw=0.8, label="1/N")
ax.set_xticks(sizes, [str(n) for n in sizes])
ax.tick_params(axis="x", which="minor", labelbottom=False)
ax.set_xlabel("sample size N (log scale)")
ax.set_ylabel("HSIC estimate, mean of 5 draws (log)")
ax.set_title("Biased HSIC, Gaussian kernels, median bandwidth")
ax.legend()
fig.tight_layout()
assert curves["independent"][-1] < curves["independent"][0] / 10 < curves["dependent"][-1]

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(1)
x = torch.randn(300, 1, generator=gen, dtype=torch.float64)
y = x ** 2 + 0.3 * torch.randn(300, 1, generator=gen, dtype=torch.float64)
y_ind = torch.randn(300, 1, generator=gen, dtype=torch.float64)
for name, v in (("y ", y), ("y'", y_ind)):
    pearson = float(torch.corrcoef(torch.cat([x, v], 1).T)[0, 1])
    print(f"N = 300, x and {name}: Pearson corr {pearson:+.2f}, normalised HSIC {float(normalized_hsic(x, v)):.2f}")
print(f"normalised HSIC(x, x) = {float(normalized_hsic(x, x)):.2f}")

# %% [markdown]
# On this draw the dependent pair has a Pearson correlation of $-0.05$ (the independent pair:
# $+0.02$), and a normalised HSIC of $0.37$ against $0.00$: the dependence that a linear
# statistic misses, HSIC sees.

# %% [markdown]
# ## 3. The per-layer statistics, checked against a kernel written from scratch
#
# For a layer with $C$ candidate channels, channel $k$'s feature maps $x_i^{(k)}$ over the $N$
# calibration samples give a Gaussian Gram matrix
# $K^{(k)}_{ij} = \exp(-\|x_i^{(k)} - x_j^{(k)}\|^2 / 2s_k^2)$ with the median heuristic
# ($s_k^2$ the median of the non-zero squared distances; a choice of this project, APIB uses a
# fixed bandwidth), centred and normalised: $\bar K_k = H K_k H / \|H K_k H\|_F$. The
# class-wise information enters through one response per class $c$, the one-vs-rest label
# kernel $(L_c)_{ij} = 1[y_i = c]\,1[y_j = c]$, centred and normalised the same way. Then
#
# * redundancy $Q_{km} = \langle \bar K_k, \bar K_m\rangle_F$ (normalised HSIC between channels),
# * relevance $R_{kc} = \langle \bar K_k, \bar L_c\rangle_F$ (normalised HSIC between channel
#   $k$ and class $c$).
#
# The layer: the inner width of block `layer3.5` of the shipped Fashion-MNIST ResNet-56
# (64 channels of 8x8 maps), on 20 training images per class. Below, the kernel is written
# with numpy from its definition, and compared with the package's `channel_kernels`; Q and R
# built from those kernels are compared with `layer_statistics`, which never forms the
# $N\times N$ kernels (it accumulates them in tiles).

# %%
data = fashion_mnist(calibration_per_class=20)
info = data.info
model = shipped_resnet56()
layer = tutorial_layer(model)
features = channel_features(model, [layer], data.images)[layer.name].double()    # (N, C, HW)
N, C = features.shape[:2]


def kernel_from_scratch(x):
    """Centred, normalised Gaussian Gram of the rows of x (N, D), median heuristic."""
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    pairs = sq[np.triu_indices(len(x), 1)]
    pairs = np.sort(pairs[pairs > 0])
    s2 = pairs[(len(pairs) - 1) // 2]                     # the lower middle value, as torch.median
    H = np.eye(len(x)) - 1.0 / len(x)
    K = H @ np.exp(-sq / (2 * s2)) @ H
    return K / np.linalg.norm(K)


Kbar = channel_kernels(features, dtype=torch.float64).numpy()                     # (C, N, N)
scratch = np.stack([kernel_from_scratch(features[:, k].numpy()) for k in range(C)])
onehot = np.eye(10)[data.labels.numpy()]
H = np.eye(N) - 1.0 / N
Lbar = np.stack([H @ np.outer(onehot[:, c], onehot[:, c]) @ H for c in range(10)])
Lbar /= np.linalg.norm(Lbar, axis=(1, 2), keepdims=True)
st = layer_statistics(model, [layer], data.images, data.labels, 10, dtype=torch.float64)[layer.name]
Q, R = st.redundancy.numpy(), st.relevance.numpy()

kernel_error = np.abs(Kbar - scratch).max()
q_error = np.abs(Q - np.einsum("kij,mij->km", scratch, scratch)).max()
r_error = np.abs(R - np.einsum("kij,cij->kc", scratch, Lbar)).max()
assert kernel_error < 1e-9 and q_error < 1e-9 and r_error < 1e-9, (kernel_error, q_error, r_error)

# %%
# NBVAL_CHECK_OUTPUT
side = int(round(features.shape[2] ** 0.5))
print(f"N = {N} calibration images, C = {C} channels of {side}x{side} maps, dead channels: {int(st.dead.sum())}")
print("every difference below 1e-9:", bool(kernel_error < 1e-9 and q_error < 1e-9 and r_error < 1e-9))

# %%
print(f"largest difference, channel_kernels vs the kernel from scratch: {kernel_error:.1e}")
print(f"largest difference, layer_statistics' Q and R vs Q, R from the scratch kernels: {q_error:.1e}, {r_error:.1e}")

# %% [markdown]
# ## 4. The multi-task HSIC regression
#
# For every class, the regression asks for a combination of channel kernels that reproduces
# that class's kernel. Its coefficients are signed, as in APIB's code (HSIC Lasso's $B \ge 0$
# is the package's `nonnegative=True` ablation):
#
# $$f(B) = \tfrac12 \sum_c \big\|\mathrm{vec}\,\bar L_c - \textstyle\sum_k B_{kc}\,\mathrm{vec}\,\bar K_k\big\|^2
# = \tfrac12\,\mathrm{tr}(B^\top Q B) - \mathrm{tr}(R^\top B) + \tfrac12 \sum_c \|\bar L_c\|_F^2,
# \qquad B \in \mathbb R^{C\times K}.$$
#
# Both sides for a random $B$ on this layer, the left from the kernels, the right from Q and R
# through the package's objective (with no penalty):

# %%
B = np.random.default_rng(2).standard_normal((C, 10)) * 0.1
lhs = 0.5 * ((Lbar - np.einsum("kc,kij->cij", B, Kbar)) ** 2).sum()
rhs = sglp_objective(torch.from_numpy(B), st.redundancy, st.relevance, NO_EDGES, lam=0.0, gamma=0.0) \
    + 0.5 * (Lbar ** 2).sum()                                        # the constant is K / 2 = 5
assert abs(lhs - rhs) < 1e-9 * abs(lhs), (lhs, rhs)

# %%
# NBVAL_CHECK_OUTPUT
print(f"1/2 sum_c ||vec Lbar_c - sum_k B_kc vec Kbar_k||^2 = {lhs:.4f}")
print(f"1/2 tr(B^T Q B) - tr(R^T B) + K/2                  = {rhs:.4f}")

# %% [markdown]
# ## 5. The IB reading of $f$ (a heuristic)
#
# Expanding the square,
#
# $$f(B) = -\underbrace{\textstyle\sum_{k,c} B_{kc} R_{kc}}_{\text{relevance}}
# + \tfrac12 \underbrace{\textstyle\sum_c \langle T_c, T_c\rangle_F}_{\text{redundancy}} + \text{const},
# \qquad T_c = \textstyle\sum_k B_{kc}\,\bar K_k .$$
#
# * The linear term is a weighted sum of normalised HSIC between each channel and each class:
#   the stand-in for $I(T;Y)$.
# * The quadratic term is, for each class, the squared Frobenius norm $\langle T_c, T_c\rangle_F$
#   of the weighted combination $T_c$ of channel kernels: an unnormalised inner product, not a
#   normalised HSIC (a normalised HSIC of anything with itself is 1). With signed $B$, $T_c$ is
#   not even a kernel matrix: a combination of positive semi-definite matrices with negative
#   weights can have negative eigenvalues, and does here (below). The term penalises keeping
#   channels whose kernels overlap ($Q_{km}$ large for two channels with weight in the same
#   column); it is not the compression term $\mathrm{HSIC}(X,T)$, and no link to $I(X;T)$ is
#   claimed or checked.
# * The two terms come with fixed weights from expanding a square: there is no free $\beta$,
#   and "$\beta = 1$" is not derived from the IB.
# * **The quadratic term removes no channel.** Without a penalty the minimiser of $f$ is
#   $B^* = Q^{+}R$, which uses every live channel; it is the sparsity penalties of sGLP-IB and
#   sTLP-IB (notebooks 02, 03) that set whole rows of $B$ to zero, i.e. prune channels.
#
# Measured at $B^*$: how many of its coefficients are negative, the smallest eigenvalue of
# each $T_c$ relative to its largest, and the rows of $B^*$ against those of a lasso
# ($\lambda$ = 0.1 max R):

# %%
B_star = np.linalg.lstsq(Q, R, rcond=None)[0]
T = np.einsum("kc,kij->cij", B_star, Kbar)
eigenvalues = np.linalg.eigvalsh(T)                                   # (K, N), ascending
relative_min = eigenvalues[:, 0] / eigenvalues[:, -1]
indefinite = int((relative_min < -1e-6).sum())
assert indefinite > 0                                                  # T_c is not a kernel matrix
lasso = solve_sglp(st.redundancy, st.relevance, NO_EDGES, 0.1 * float(st.relevance.max()), 0.0, tol=1e-9).B.numpy()
rows_star = int((np.linalg.norm(B_star, axis=1) > 1e-7).sum())
rows_lasso = int((np.linalg.norm(lasso, axis=1) > 1e-7).sum())
assert rows_star == C - int(st.dead.sum()) and rows_lasso < rows_star

# %%
# NBVAL_CHECK_OUTPUT
print(f"negative coefficients in B* = Q^+ R: {100 * (B_star < 0).mean():.0f}%")
print(f"classes whose T_c has a negative eigenvalue (below -1e-6 of its largest): {indefinite} of 10")
print(f"non-zero rows of B* (no penalty): {rows_star} of {C}")
print(f"non-zero rows with the l1 penalty, lambda = 0.1 max R: {rows_lasso} of {C}")

# %%
print("smallest / largest eigenvalue of T_c per class:", np.round(relative_min, 2))

# ## 6. What Q and R of a trained layer look like
#
# Q with its channels ordered by average-linkage clustering (distance $1 - Q$), so that groups
# of mutually redundant channels sit together; the black squares outline the clusters of the
# tree cut at distance 0.5 (sub-clusters merged at an average distance $1 - Q$ of at most 0.5). R
# with the same channel order.

# %%
dist = np.clip(1 - Q, 0, None)
np.fill_diagonal(dist, 0)
tree = linkage(squareform(dist, checks=False), method="average")
order = leaves_list(tree)
clusters = fcluster(tree, 0.5, criterion="distance")[order]          # cluster label of each channel, in order
starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
sizes = np.diff(np.r_[starts, C])
fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1.15, 1]})
im = axes[0].imshow(Q[order][:, order], cmap="viridis", vmin=0, vmax=1)
for start, size in zip(starts, sizes):
    axes[0].add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor="black", lw=1.2))
axes[0].set_title("redundancy Q (channels by cluster, clusters outlined)")
axes[0].set_xlabel("channel (clustered order)")
axes[0].set_ylabel("channel (clustered order)")
fig.colorbar(im, ax=axes[0], fraction=0.046, label="Q: normalised HSIC")
im = axes[1].imshow(R[order], cmap="magma", vmin=0, aspect="auto")
axes[1].set_xticks(range(10), info.class_names, rotation=90)
axes[1].set_ylabel("channel (same order)")
axes[1].set_title("relevance R (channels x classes)")
fig.colorbar(im, ax=axes[1], fraction=0.046, label="R: normalised HSIC")
fig.tight_layout()

# %%
print("cluster sizes at distance 0.5, in the plotted order:", sizes.tolist())
largest = order[clusters == clusters[starts[np.argmax(sizes)]]]
print(f"mean Q inside the largest cluster: {Q[np.ix_(largest, largest)].mean():.2f}; "
      f"over all channel pairs: {Q.mean():.2f}")

# %% [markdown]
# At this cut most channels fall into one cluster (46 of 64, printed above), whose mean $Q$ is
# barely above the mean over all pairs: this layer's redundancy has a few small tight groups,
# not a clear block structure.
#
# How much of R is class-wise? Most of it is not: R is close to rank one, the product of a
# channel's overall strength and a class's overall "ease" (how distinct the class is in this
# layer). The class-wise part is what is left after that product, the residual
# $R - \sigma_1 u_1 v_1^\top$. Any matrix of positive entries has a large rank-one share (its
# mean alone is a rank-one matrix), so the share is set beside a null: the same entries of R
# shuffled over its 64 x 10 cells, 1000 times, which keeps their values and removes any
# channel or class structure.

# %%
U, S, Vt = np.linalg.svd(R, full_matrices=False)
rank_one = S[0] * np.outer(U[:, 0], Vt[0])
share = S[0] ** 2 / (S ** 2).sum()


def rank_one_share(M):
    s = np.linalg.svd(M, compute_uv=False)
    return s[0] ** 2 / (s ** 2).sum()


rng = np.random.default_rng(0)
null_share = np.array([rank_one_share(rng.permutation(R.ravel()).reshape(R.shape)) for _ in range(1000)])
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
vmax = R.max()
for ax, M, title in ((axes[0], R, "R"), (axes[1], rank_one, f"rank one: {100 * share:.0f}% of ||R||^2")):
    im = ax.imshow(M[order], cmap="magma", vmin=0, vmax=vmax, aspect="auto")
    ax.set_title(title)
fig.colorbar(im, ax=axes[:2], fraction=0.03, label="normalised HSIC")
residual = R - rank_one
lim = np.abs(residual).max()
im = axes[2].imshow(residual[order], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
axes[2].set_title("residual: the class-wise part")
fig.colorbar(im, ax=axes[2], fraction=0.046, label="R minus its rank-one part")
for ax in axes:
    ax.set_xticks(range(10), info.class_names, rotation=90)
axes[0].set_ylabel("channel (by cluster)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"rank-one share of ||R||_F^2: {100 * share:.0f}%")
print(f"the same for R's entries shuffled (1000 draws): mean {100 * null_share.mean():.0f}%, "
      f"largest {100 * null_share.max():.0f}%")
print("classes in the order of their overall ease (largest |v_1| first):",
      [info.class_names[c] for c in np.argsort(-np.abs(Vt[0]))][:4], "...")

# %% [markdown]
# R's rank-one share is above every shuffled draw, but only by a few points: most of R's
# rank-one share is what any positive matrix of these values has.
#
# Is the class-wise part noise? The signs alone cannot say: R's entries are all non-negative
# (an inner product of two centred kernels), so by Perron-Frobenius its leading singular
# vectors can be taken non-negative, and the residual, orthogonal to that positive rank-one
# matrix, must change sign, whatever R holds. What can tell is a second draw: the same
# statistics on 20 *other* training images per class (seed 2 instead of 1). If the residual
# were sampling noise, the two residuals would be uncorrelated; the null is the correlation with
# the second residual's channels shuffled (1000 permutations).

# %%
cal_x, cal_y = class_balanced_batch(*load_tensors("fashion-mnist", "train"), 20, seed=2)
images2, labels2 = next(iter(DeviceLoader(cal_x, cal_y, batch_size=len(cal_y), train=False,
                                          mean=info.mean, std=info.std)))
R2 = layer_statistics(model, [layer], images2, labels2, 10, dtype=torch.float64)[layer.name].relevance.numpy()
U2, S2, Vt2 = np.linalg.svd(R2, full_matrices=False)
residual2 = R2 - S2[0] * np.outer(U2[:, 0], Vt2[0])
agreement = np.corrcoef(residual.ravel(), residual2.ravel())[0, 1]
shuffled = np.array([np.corrcoef(residual.ravel(), residual2[rng.permutation(C)].ravel())[0, 1]
                     for _ in range(1000)])
assert agreement > shuffled.max()

# %%
# NBVAL_CHECK_OUTPUT
print(f"correlation of the two draws' residuals: {agreement:.2f}")
print(f"with the second draw's channels shuffled (1000 permutations): 95% within "
      f"+-{np.percentile(np.abs(shuffled), 95):.2f}, largest {shuffled.max():.2f}")
print(f"rank-one share on the second draw: {100 * rank_one_share(R2):.0f}%")

# %% [markdown]
# The class-wise part is small (13% of $\|R\|_F^2$) and reproducible: it correlates 0.92
# between two disjoint calibration draws, far above the shuffled null. It is what lets a
# channel matter for some classes and not others. A single class-agnostic response (APIB) sees
# one number per channel; notebook 04 measures how much the kept channels change when the
# lasso sees all ten columns, and notebooks 02 and 03 how the class graph and the class tree tie
# those columns together. Whether that changes accuracy after pruning is measured over seeds in
# `05_does_it_pay`, not here.
