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
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from paperprune.ib import channel_features, channel_kernels, hsic, layer_statistics, normalized_hsic
from paperprune.lasso import sglp_objective, solve_sglp
from paperprune.structure import ClassGraph
from paperprune.tutorial import fashion_mnist, shipped_resnet56, tutorial_layer

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
# $y = \sin(2x) + 0.3\,\varepsilon$ depends on $x$ non-linearly (its linear correlation with
# $x$ is small); $y'$ is drawn independently. As $N$ grows the biased estimate for the
# independent pair decays like $1/N$, the dependent one settles at a positive value.

# %%
sizes = [25, 50, 100, 200, 400, 800]
gen = torch.Generator().manual_seed(0)
curves = {"dependent": [], "independent": []}
for n in sizes:
    runs = {"dependent": [], "independent": []}
    for _ in range(5):
        x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        y = torch.sin(2 * x) + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
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
y = torch.sin(2 * x) + 0.3 * torch.randn(300, 1, generator=gen, dtype=torch.float64)
print(f"Pearson corr(x, y)     = {float(torch.corrcoef(torch.cat([x, y], 1).T)[0, 1]):.4g}")
print(f"HSIC(x, y)             = {float(hsic(x, y)):.6g}")
print(f"normalised HSIC(x, y)  = {float(normalized_hsic(x, y)):.6g}")
print(f"normalised HSIC(x, x)  = {float(normalized_hsic(x, x)):.6g}")

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
print(f"N = {N} calibration images, C = {C} channels, dead channels: {int(st.dead.sum())}")
print("largest difference, channel_kernels vs the kernel from scratch: < 1e-9")
print("largest difference, layer_statistics' Q and R vs Q, R from the scratch kernels: < 1e-9")

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
# + \tfrac12 \underbrace{\textstyle\sum_c \big\|\textstyle\sum_k B_{kc} \bar K_k\big\|_F^2}_{\text{redundancy}} + \text{const}.$$
#
# * The linear term is a weighted sum of normalised HSIC between each channel and each class:
#   the stand-in for $I(T;Y)$.
# * The quadratic term is, for each class, the normalised HSIC of the weighted combination
#   $T_c = \sum_k B_{kc}\bar K_k$ **with itself**, HSIC$(T,T)$, not HSIC$(X,T)$. It penalises
#   keeping channels that duplicate each other. It relates to the compression term only
#   loosely: HSIC is an inner product of centred kernels, so by Cauchy-Schwarz
#   $\mathrm{HSIC}(X,T)^2 \le \mathrm{HSIC}(X,X)\,\mathrm{HSIC}(T,T)$; a small HSIC$(T,T)$
#   caps how much $T$ can depend on the input, nothing more.
# * The two terms come with fixed weights from expanding a square: there is no free $\beta$,
#   and "$\beta = 1$" is not derived from the IB.
# * **The quadratic term removes no channel.** Without a penalty the minimiser of $f$ is
#   $B^* = Q^{+}R$, which uses every live channel; it is the sparsity penalties of sGLP-IB and
#   sTLP-IB (notebooks 02, 03) that set whole rows of $B$ to zero, i.e. prune channels.
#
# The Cauchy-Schwarz bound with $X$ the layer's input image and $T_c$ the combination for each
# class at $B^*$, and the rows of $B^*$ against those of a lasso ($\lambda$ = 0.1 max R):

# %%
images = data.images.flatten(1).double().numpy()
KX = kernel_from_scratch(images)                                  # normalised, so HSIC(X,X) = 1
B_star = np.linalg.lstsq(Q, R, rcond=None)[0]
T = np.einsum("kc,kij->cij", B_star, Kbar)
hsic_xt = np.einsum("ij,cij->c", KX, T)
hsic_tt = np.einsum("cij,cij->c", T, T)
assert np.all(hsic_xt ** 2 <= hsic_tt * (KX ** 2).sum() + 1e-12)
lasso = solve_sglp(st.redundancy, st.relevance, NO_EDGES, 0.1 * float(st.relevance.max()), 0.0, tol=1e-9).B.numpy()
rows_star = int((np.linalg.norm(B_star, axis=1) > 1e-7).sum())
rows_lasso = int((np.linalg.norm(lasso, axis=1) > 1e-7).sum())
assert rows_star == C - int(st.dead.sum()) and rows_lasso < rows_star

# %%
# NBVAL_CHECK_OUTPUT
print("HSIC(X, T_c)^2 <= HSIC(X, X) HSIC(T_c, T_c) for all 10 classes")
print(f"non-zero rows of B* = Q^+ R (no penalty): {rows_star} of {C}")
print(f"non-zero rows with the l1 penalty, lambda = 0.1 max R: {rows_lasso} of {C}")

# %% [markdown]
# ## 6. What Q and R of a trained layer look like
#
# Q with its channels ordered by average-linkage clustering (distance $1 - Q$), so that groups
# of mutually redundant channels form blocks; R with the same channel order.

# %%
dist = np.clip(1 - Q, 0, None)
np.fill_diagonal(dist, 0)
order = leaves_list(linkage(squareform(dist, checks=False), method="average"))
fig, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1.15, 1]})
im = axes[0].imshow(Q[order][:, order], cmap="viridis", vmin=0, vmax=1)
axes[0].set_title("redundancy Q (channels by cluster)")
axes[0].set_xlabel("channel")
axes[0].set_ylabel("channel")
fig.colorbar(im, ax=axes[0], fraction=0.046, label="normalised HSIC")
im = axes[1].imshow(R[order], cmap="magma", vmin=0, aspect="auto")
axes[1].set_xticks(range(10), info.class_names, rotation=90)
axes[1].set_ylabel("channel (same order)")
axes[1].set_title("relevance R (channels x classes)")
fig.colorbar(im, ax=axes[1], fraction=0.046, label="normalised HSIC")
fig.tight_layout()

# %% [markdown]
# How much of R is class-wise? Most of it is not: R is close to rank one, the product of a
# channel's overall strength and a class's overall "ease" (how distinct the class is in this
# layer). The class-wise part is what is left after that product, the residual $R - \sigma_1 u_1 v_1^\top$:

# %%
U, S, Vt = np.linalg.svd(R, full_matrices=False)
rank_one = S[0] * np.outer(U[:, 0], Vt[0])
share = S[0] ** 2 / (S ** 2).sum()
assert share > 0.5  # the reading below: most of R is the rank-one product
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
vmax = R.max()
for ax, M, title in ((axes[0], R, "R"), (axes[1], rank_one, f"rank one: {100 * share:.0f}% of ||R||^2")):
    im = ax.imshow(M[order], cmap="magma", vmin=0, vmax=vmax, aspect="auto")
    ax.set_title(title)
fig.colorbar(im, ax=axes[:2], fraction=0.03, label="normalised HSIC")
residual = (R - rank_one)[order]
lim = np.abs(residual).max()
im = axes[2].imshow(residual, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
axes[2].set_title("residual: the class-wise part")
fig.colorbar(im, ax=axes[2], fraction=0.046)
for ax in axes:
    ax.set_xticks(range(10), info.class_names, rotation=90)
axes[0].set_ylabel("channel (by cluster)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"rank-one share of ||R||_F^2: {100 * share:.0f}%")
print("classes in the order of their overall ease (largest |v_1| first):",
      [info.class_names[c] for c in np.argsort(-np.abs(Vt[0]))][:4], "...")

# %% [markdown]
# The class-wise part is small but not noise: it is what lets a channel matter for some
# classes and not others (the residual's rows change sign across classes). A single
# class-agnostic response (APIB) sees one number per channel; notebook 04 measures how much the
# kept channels change when the lasso sees all ten columns, and notebooks 02 and 03 how the
# class graph and the class tree tie those columns together.
