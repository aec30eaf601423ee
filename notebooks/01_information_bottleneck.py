# %% [markdown]
# # 01 - From the Information Bottleneck to a multi-task HSIC lasso
#
# The abstract says the two schemes are structured lassos "guided by Information Bottleneck
# theory". This notebook follows the chain of ideas this project uses to make that concrete
# (METHOD.md section 2). The algebra is checked numerically; the step from the IB to HSIC is a
# heuristic (the HSIC bottleneck), which no number can check:
#
# 1. the IB objective, and why HSIC stands in for mutual information (the HSIC bottleneck);
# 2. the HSIC estimator on dependent and independent data;
# 3. the per-layer statistics (redundancy Q, class-wise relevance R) and the identity
#    $f(B) = \tfrac12 \sum_c \|\mathrm{vec}\,\bar L_c - \sum_k B_{kc}\,\mathrm{vec}\,\bar K_k\|^2
#    = \tfrac12 \mathrm{tr}(B^\top Q B) - \mathrm{tr}(R^\top B) + \text{const}$;
# 4. Q and R of a trained layer, as pictures.

# %% [markdown]
# **What comes from the paper and what is reconstruction.** Only the abstract of Liu et al.,
# *Automatic Pruning via Structured Lasso with Class-wise Information* (arXiv 2502.09125) is
# available. From it: the two schemes and their names, **sGLP-IB** (sparse graph-structured
# lasso pruning with Information Bottleneck) and **sTLP-IB** (sparse tree-guided lasso pruning
# with Information Bottleneck); that they are structured lassos over filters guided by IB theory
# "to retain statistical information before and after pruning", using "class-wise" relatedness;
# and the headline numbers (VGG-16 / CIFAR-10: parameters -85 %, FLOPs -61 %, top-1 94.10 %;
# a ResNet, depth not stated / ImageNet: parameters -55 %, top-1 76.12 %). Everything else here (the HSIC
# statistics, the class-wise kernels, the exact objectives, the class graph and tree, the
# solvers, the automatic budget rule) is this project's reconstruction from the paper's lineage
# (APIB, HSIC Lasso, Kim & Xing's graph- and tree-guided lassos, Jenatton et al.'s tree prox),
# as written down in `METHOD.md` section 1-2 and the module docstrings.

# %%
# %matplotlib inline
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from paperprune.data import DeviceLoader, class_balanced_batch, load_tensors, make_loaders
from paperprune.models import PrunableLayer
from paperprune.train import TrainConfig, train
from paperprune.utils import seed_everything

torch.set_num_threads(2)
plt.rcParams.update({"figure.figsize": (5, 3.5), "figure.dpi": 80, "font.size": 8})
from paperprune.ib import channel_kernels, feature_statistics, hsic, layer_statistics, normalized_hsic
from paperprune.lasso import sglp_objective
from paperprune.structure import ClassGraph

# %% [markdown]
# ## 1. The Information Bottleneck and the HSIC bottleneck
#
# For an input $X$, a label $Y$ and a representation $T$ (here: the channels a layer keeps),
# the Information Bottleneck (Tishby et al.) asks for
#
# $$\min_T \; I(X;T) - \beta\, I(T;Y),$$
#
# a representation that forgets as much of the input as it can (compression) while keeping
# what predicts the label (relevance). Mutual information between high-dimensional feature
# maps is hard to estimate. The *HSIC bottleneck* (Ma, Lewis & Kleijn, AAAI 2020) replaces
# both terms by the Hilbert-Schmidt Independence Criterion,
#
# $$\min_T \; \mathrm{HSIC}(X,T) - \beta\, \mathrm{HSIC}(T,Y), \qquad
# \mathrm{HSIC}(U,V) \approx \frac{1}{(N-1)^2}\,\mathrm{tr}(K_U H K_V H),$$
#
# with Gram matrices $K_U, K_V$ of characteristic kernels (Gaussian here) over $N$ samples
# and the centring matrix $H = I - \mathbf 1\mathbf 1^\top/N$. HSIC is zero iff $U$ and $V$
# are independent (in the population limit), so it measures dependence of any kind.
#
# ## 2. The estimator on dependent and independent data
#
# $y = \sin(2x) + 0.3\,\varepsilon$ depends on $x$ non-linearly (its linear correlation
# with $x$ is small); $y'$ is drawn independently. As $N$ grows the biased estimate for the
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
fig, ax = plt.subplots()
for key, marker in (("dependent", "o"), ("independent", "s")):
    ax.loglog(sizes, curves[key], marker=marker, label=key)
ax.set_xticks(sizes, [str(n) for n in sizes])
ax.tick_params(axis="x", which="minor", labelbottom=False)
ax.set_xlabel("sample size N")
ax.set_ylabel("HSIC estimate (mean of 5 draws)")
ax.set_title("Biased HSIC, Gaussian kernels, median bandwidth")
ax.legend()
fig.tight_layout()

# %%
# NBVAL_CHECK_OUTPUT
# At a fixed seed the estimates are deterministic: the normalised version lies in [0, 1].
gen = torch.Generator().manual_seed(1)
x = torch.randn(300, 1, generator=gen, dtype=torch.float64)
y = torch.sin(2 * x) + 0.3 * torch.randn(300, 1, generator=gen, dtype=torch.float64)
print(f"Pearson corr(x, y)     = {float(torch.corrcoef(torch.cat([x, y], 1).T)[0, 1]):.4g}")
print(f"HSIC(x, y)             = {float(hsic(x, y)):.6g}")
print(f"normalised HSIC(x, y)  = {float(normalized_hsic(x, y)):.6g}")
print(f"normalised HSIC(x, x)  = {float(normalized_hsic(x, x)):.6g}")

# %% [markdown]
# ## 3. Per-layer statistics and the multi-task HSIC regression
#
# For a layer with $C$ candidate channels, channel $k$'s feature maps over the $N$ calibration
# samples give a Gaussian Gram matrix $K_k$, centred and normalised:
# $\bar K_k = H K_k H / \|H K_k H\|_F$. The class-wise information enters through one
# response per class $c$, the one-vs-rest label kernel
# $(L_c)_{ij} = 1[y_i = c]\,1[y_j = c]$, centred and normalised the same way ($\bar L_c$).
# Then
#
# * redundancy $Q_{km} = \langle \bar K_k, \bar K_m\rangle_F$ (normalised HSIC between channels),
# * relevance $R_{kc} = \langle \bar K_k, \bar L_c\rangle_F$ (normalised HSIC between channel $k$ and class $c$).
#
# The multi-task HSIC regression asks, for every class, for a combination of channel kernels
# that reproduces that class's kernel. Its coefficients are signed, as in APIB's code (HSIC
# Lasso's $B \ge 0$ is the package's `nonnegative=True` ablation):
#
# $$f(B) = \tfrac12 \sum_c \big\|\mathrm{vec}\,\bar L_c - \textstyle\sum_k B_{kc}\,\mathrm{vec}\,\bar K_k\big\|^2
# = \tfrac12\,\mathrm{tr}(B^\top Q B) - \mathrm{tr}(R^\top B) + \tfrac12 \sum_c \|\bar L_c\|_F^2,
# \qquad B \in \mathbb R^{C\times K}.$$
#
# We check it on a small random layer: $N = 40$ samples of $K = 3$ classes, $C = 6$ channels
# with 5 "pixels" each, the first three of which carry the label. The package computes Q and
# R without ever forming the $N\times N$ kernels (`feature_statistics`, tiled); `channel_kernels`
# materialises them for small $N$. The class kernels are obtained with the same function from
# the one-hot labels: a Gaussian kernel of a 0/1 indicator is $a + b\,1[y_i=y_j \text{ in that
# indicator}]$, and after centring and normalising it equals $\bar L_c$ exactly (checked below
# against the definition).

# %%
gen = torch.Generator().manual_seed(0)
N, C, K, D = 40, 6, 3, 5
y_small = torch.arange(N) % K
feats = torch.randn(N, C, D, generator=gen, dtype=torch.float64)
feats[:, :3] += 1.5 * y_small[:, None, None].double()          # three informative channels
Kbar = channel_kernels(feats, dtype=torch.float64)             # (C, N, N)
onehot = nn.functional.one_hot(y_small, K).double()
Lbar = channel_kernels(onehot[:, :, None], dtype=torch.float64)  # (K, N, N)
H = torch.eye(N, dtype=torch.float64) - 1.0 / N
L_def = torch.stack([H @ torch.outer(onehot[:, c], onehot[:, c]) @ H for c in range(K)])
L_def = L_def / L_def.flatten(1).norm(dim=1)[:, None, None]
stats = feature_statistics(feats, y_small, K, dtype=torch.float64)
Q, R = stats.redundancy, stats.relevance

# %%
# NBVAL_CHECK_OUTPUT
print("Kbar:", tuple(Kbar.shape), " Lbar:", tuple(Lbar.shape), " Q:", tuple(Q.shape), " R:", tuple(R.shape))
print("Lbar equals H L H / ||H L H||_F:", bool(torch.allclose(Lbar, L_def, atol=1e-12)))
print("Q equals <Kbar_k, Kbar_m>:", bool(torch.allclose(Q, torch.einsum("kij,mij->km", Kbar, Kbar), atol=1e-12)))
print("R equals <Kbar_k, Lbar_c>:", bool(torch.allclose(R, torch.einsum("kij,cij->kc", Kbar, Lbar), atol=1e-12)))
print("relevance R (rows: channels, columns: classes):")
print(np.array2string(R.numpy(), precision=4, suppress_small=True))

# %%
# NBVAL_CHECK_OUTPUT
B = torch.rand(C, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
lhs = 0.5 * ((Lbar - torch.einsum("kc,kij->cij", B, Kbar)) ** 2).sum()
no_edges = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                      torch.zeros(0, dtype=torch.float64))
quadratic = sglp_objective(B, Q, R, no_edges, lam=0.0, gamma=0.0)   # 1/2 tr(B^T Q B) - tr(R^T B)
const = 0.5 * float((Lbar ** 2).sum())                               # = K / 2
rhs = quadratic + const
print(f"left side  1/2 sum_c ||vec Lbar_c - sum_k B_kc vec Kbar_k||^2 = {float(lhs):.6g}")
print(f"right side 1/2 tr(B^T Q B) - tr(R^T B) + K/2             = {rhs:.6g}")
print("agree to 1e-12:", abs(float(lhs) - rhs) < 1e-12)


# %% [markdown]
# **The IB reading (a heuristic).** Expanding $f$,
#
# $$f(B) = -\underbrace{\textstyle\sum_{k,c} B_{kc} R_{kc}}_{\text{relevance: HSIC with each class, a stand-in for } I(T;Y)}
# + \tfrac12 \underbrace{\textstyle\sum_c \big\|\sum_k B_{kc} \bar K_k\big\|_F^2}_{\text{HSIC}(T,T)\text{ of the weighted combination}} + \text{const}.$$
#
# Minimising $f$ rewards channels that depend on the classes and penalises keeping channels
# that duplicate each other. The quadratic term is HSIC$(T,T)$, not HSIC$(X,T)$: it relates to
# the compression term $I(X;T)$ only loosely (by Cauchy-Schwarz, HSIC$(X,T)^2 \le$
# HSIC$(X,X)\,$HSIC$(T,T)$, so a small HSIC$(T,T)$ bounds the dependence on the input). What
# removes channels is not this term but the sparsity penalties of sGLP-IB and sTLP-IB
# (notebooks 02 and 03), which make whole rows of $B$ zero: those channels are pruned. That
# this is the IB reading the paper uses is our reconstruction (APIB, Guo et al. ICCV 2023,
# makes the same argument with a single response kernel).
#
# ## 4. Redundancy and relevance of a trained layer
#
# A small CNN (defined here as a user would; the package prunes any CNN whose prunable
# layers are named) is trained for three short epochs, then the package computes Q and R for
# its second conv layer (32 channels) on 20 calibration images per class.

# %%
class SmallCNN(nn.Module):
    """A three-conv CNN for 1x32x32 inputs: small enough to train on CPU in seconds."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, num_classes)   # the package reads class embeddings at its input

    def forward(self, x):
        return self.classifier(self.features(x))


# The candidate channels: output of the second conv, observed after BN + ReLU (METHOD.md section 2).
layer = PrunableLayer(name="features.4", conv="features.4", observe="features.6")

seed_everything(0)
train_loader, _, info = make_loaders("fashion-mnist", per_class=300, batch_size=64)
test_x, test_y = class_balanced_batch(*load_tensors("fashion-mnist", "test"), 100)
test_loader = DeviceLoader(test_x, test_y, batch_size=500, mean=info.mean, std=info.std, train=False)
model = SmallCNN(info.num_classes)
result = train(model, train_loader, test_loader, TrainConfig(epochs=3, lr=0.1, batch_size=64),
               tempfile.mkdtemp(), device="cpu", progress=False)
print(f"SmallCNN after 3 epochs on 3,000 images: test top-1 {result['top1']:.1f}% (1,000 test images)")

# A class-balanced calibration set without augmentation: 20 training images per class.
cal_x, cal_y = class_balanced_batch(*load_tensors("fashion-mnist", "train"), 20, seed=1)
images, labels = next(iter(DeviceLoader(cal_x, cal_y, batch_size=len(cal_y), mean=info.mean,
                                        std=info.std, train=False)))
print("calibration set:", tuple(images.shape))

# %%
st = layer_statistics(model, [layer], images, labels, info.num_classes, dtype=torch.float64)[layer.name]
order = torch.argsort(st.relevance.sum(1), descending=True)   # channels by total relevance
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5), gridspec_kw={"width_ratios": [1.1, 1]})
im = axes[0].imshow(st.redundancy[order][:, order].numpy(), cmap="viridis", vmin=0, vmax=1)
axes[0].set_title("redundancy Q (channels x channels)")
fig.colorbar(im, ax=axes[0], fraction=0.046)
im = axes[1].imshow(st.relevance[order].numpy(), cmap="magma", aspect="auto")
axes[1].set_xticks(range(info.num_classes), info.class_names, rotation=90, fontsize=6)
axes[1].set_title("relevance R (channels x classes)")
fig.colorbar(im, ax=axes[1], fraction=0.046)
for ax in axes:
    ax.set_ylabel("channel (by total relevance)")
fig.tight_layout()
print(f"N = {st.num_samples}, dead channels: {int(st.dead.sum())}, "
      f"mean off-diagonal Q = {float((st.redundancy.sum() - st.redundancy.trace()) / (32 * 31)):.3f}")

# %% [markdown]
# Channels are sorted by total relevance. Q's off-diagonal is far from zero: Gaussian-kernel
# features of one layer are strongly dependent on each other, which is why the regression
# needs only a few of them. R shows the class-wise structure the abstract refers to: the
# rows are far from constant, a channel is relevant to some classes and nearly independent
# of others. A single class-agnostic response (APIB) would see only one number per channel.
