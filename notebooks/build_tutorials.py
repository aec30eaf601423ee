"""Write the four tutorial notebooks with nbformat, then execute them in place.

The notebooks are generated from this file so that they can be reviewed as code:

    .venv/bin/python notebooks/build_tutorials.py            # write + execute all four
    .venv/bin/python notebooks/build_tutorials.py 02 03      # only those
    .venv/bin/python notebooks/build_tutorials.py --no-execute

Executed outputs are stored in the notebooks because nbval (`make test`, which runs
`pytest --nbval-lax`) compares the cells marked `# NBVAL_CHECK_OUTPUT` against them; those
cells print only deterministic values (counts, shapes, objective values at fixed seeds,
rounded). Everything else only has to run without error. After execution the notebooks are
cleaned for version control: no execution timestamps, no stderr streams (progress bars,
warnings) and no widget state.

The notebooks only call the `paperprune` package; the one model defined in a notebook
(`SmallCNN`, 01-03) is the user's own model handed to the package, as a user would.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from build_batch_notebooks import notebook  # stable cell ids: rebuilding changes only what changed

HERE = Path(__file__).resolve().parent
CHECK = "# NBVAL_CHECK_OUTPUT"


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(*parts: str):
    """A code cell; each part is dedented on its own (shared snippets + notebook-specific code)."""
    return new_code_cell("\n".join(textwrap.dedent(p).strip("\n") for p in parts).strip())


PROVENANCE = """
**What comes from the paper and what is reconstruction.** Only the abstract of Liu et al.,
*Automatic Pruning via Structured Lasso with Class-wise Information* (arXiv 2502.09125) is
available. From it: the two schemes and their names, **sGLP-IB** (sparse graph-structured
lasso pruning with Information Bottleneck) and **sTLP-IB** (sparse tree-guided lasso pruning
with Information Bottleneck); that they are structured lassos over filters guided by IB theory
"to retain statistical information before and after pruning", using "class-wise" relatedness;
and the headline numbers (VGG-16 / CIFAR-10: parameters -85 %, FLOPs -61 %, top-1 94.10 %;
a ResNet, depth not stated / ImageNet: parameters -55 %, top-1 76.12 %). Everything else here (the HSIC
statistics, the class-wise kernels, the exact objectives, the class graph and tree, the
solvers, the automatic budget rule) is this project's reconstruction from the paper's lineage
(APIB, HSIC Lasso, Kim & Xing's graph- and tree-guided lassos, Jenatton et al.'s tree prox),
as written down in `METHOD.md` section 1-2 and the module docstrings.
"""

SMALL_CNN = '''
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
'''

SMALL_CNN_IMPORTS = """
%matplotlib inline
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
"""


# ----------------------------------------------------------------------------- 00 quickstart

QUICKSTART = [
    md("""
    # 00 - Quickstart: prune a Fashion-MNIST ResNet-56 with one call

    This notebook trains a ResNet-56 very briefly on a subset of Fashion-MNIST, prunes half of
    its multiply-accumulates (MACs) with **sTLP-IB** through the single call
    `paperprune.prune(...)`, and shows what was removed, what the pruned model costs (MACs,
    parameters, CPU latency) and its accuracy before and after a short fine-tuning.

    To run on a laptop CPU in a couple of minutes, the model sees only 3,000 training images for
    two epochs, so its accuracy is far below a converged model's; the point is the mechanics. The
    full experiments (`python -m paperprune run`, `make reproduce`) train and fine-tune for real.
    """),
    md(PROVENANCE),
    code("""
    %matplotlib inline
    import tempfile

    import matplotlib.pyplot as plt
    import torch

    import paperprune
    from paperprune.data import DeviceLoader, class_balanced_batch, load_tensors, make_loaders
    from paperprune.experiment import measure_latency
    from paperprune.models import create_model, input_size, prunable_layers
    from paperprune.train import TrainConfig, evaluate, train
    from paperprune.utils import seed_everything

    torch.set_num_threads(2)
    plt.rcParams.update({"figure.figsize": (5, 3.5), "figure.dpi": 80, "font.size": 8})
    seed_everything(0)
    """),
    md("""
    ## Data and model

    `make_loaders(..., per_class=300)` keeps a class-balanced subset of 300 training images per
    class. For speed we also evaluate on a class-balanced subset of 1,000 test images.
    Fashion-MNIST images are zero-padded to 32x32, one channel.
    """),
    code("""
    train_loader, _, info = make_loaders("fashion-mnist", per_class=300, batch_size=32)
    test_x, test_y = class_balanced_batch(*load_tensors("fashion-mnist", "test"), 100)
    test_loader = DeviceLoader(test_x, test_y, batch_size=500, mean=info.mean, std=info.std, train=False)
    size = input_size(info)
    print(info.name, "classes:", info.class_names)
    """),
    code(f"""
    {CHECK}
    model = create_model("resnet56", num_classes=info.num_classes, in_channels=info.in_channels)
    macs, params = paperprune.count_flops_params(model, size)
    print("input size:", size)
    print("prunable layers:", len(prunable_layers(model)))
    print(f"MACs: {{macs:,}}   params: {{params:,}}")
    """),
    md("""
    ResNet-56's prunable channels are the inner channels of its 27 basic blocks (the residual
    widths are kept, as in HRank/APIB). Its conv + linear MACs on 3x32x32 CIFAR inputs are the
    published 125.49M; with one input channel the first conv is cheaper.

    ## A (very) short training run
    """),
    code("""
    trained = train(model, train_loader, test_loader, TrainConfig(epochs=2, lr=0.02, batch_size=32),
                    tempfile.mkdtemp(), device="cpu", progress=False)
    before = evaluate(model, test_loader, "cpu")
    print(f"test top-1 before pruning: {before['top1']:.1f}%")
    """),
    md("""
    ## One call: prune half of the MACs with sTLP-IB

    `paperprune.prune` draws a class-balanced calibration set (20 images per class) from the
    loader, computes each layer's IB statistics (redundancy Q, class-wise relevance R), builds
    the class tree from the model's class embeddings, and bisects one global lasso weight lam
    until the pruned model has 50 % fewer MACs (within 1 %). Per-layer widths are not set by
    hand: they fall out of the lasso. The input model is left untouched.
    """),
    code("""
    pruned, report = paperprune.prune(model, train_loader, method="stlp", flops_reduction=0.5,
                                      input_size=size, progress=False)
    print(report.summary())
    """),
    code("""
    rows = report.layers
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(x, [r["width_before"] for r in rows], color="lightgray", label="before")
    ax.bar(x, [r["width_after"] for r in rows], color="tab:blue", label="after (sTLP-IB)")
    ax.set_xticks(list(x), [r["name"].removesuffix(".conv1") for r in rows], rotation=90, fontsize=5)
    ax.set_ylabel("channels")
    ax.set_title("Inner width of every ResNet-56 block")
    ax.legend()
    fig.tight_layout()
    """),
    md("""
    ## What it costs

    MACs and parameters (conv + linear, METHOD.md section 4) and the median CPU wall time of one
    forward pass at batch size 1 and 64 (this machine, so the absolute numbers vary).
    """),
    code("""
    macs_after, params_after = paperprune.count_flops_params(pruned, size)
    print(f"MACs   {macs:>12,} -> {macs_after:>12,}  (-{100 * (1 - macs_after / macs):.1f}%)")
    print(f"params {params:>12,} -> {params_after:>12,}  (-{100 * (1 - params_after / params):.1f}%)")
    cpu = torch.device("cpu")
    for bs in (1, 64):
        base_ms = measure_latency(model, size, bs, cpu, repeats=5)
        pruned_ms = measure_latency(pruned, size, bs, cpu, repeats=5)
        print(f"CPU latency, batch {bs:>2}: {base_ms:7.1f} ms -> {pruned_ms:7.1f} ms  ({base_ms / pruned_ms:.2f}x)")
    """),
    md("""
    ## Accuracy before and after

    Right after surgery the pruned network has lost channels its later layers relied on; a
    short fine-tuning (here one epoch on the same 3,000 images, a stand-in for the 150-epoch
    recipe of the full experiments) recovers much of it.
    """),
    code("""
    after = evaluate(pruned, test_loader, "cpu")
    train(pruned, train_loader, test_loader, TrainConfig(epochs=1, lr=0.01, batch_size=32),
          tempfile.mkdtemp(), device="cpu", progress=False)
    tuned = evaluate(pruned, test_loader, "cpu")
    print(f"top-1 before pruning        {before['top1']:5.1f}%")
    print(f"top-1 right after pruning   {after['top1']:5.1f}%")
    print(f"top-1 after 1-epoch finetune {tuned['top1']:5.1f}%")
    """),
    md("""
    ## Saving and loading the pruned model

    `save_pruned` stores plain tensors and the layer widths (no pickled modules);
    `load_pruned` rebuilds the architecture and loads the weights.
    """),
    code("""
    path = paperprune.save_pruned(pruned, f"{tempfile.mkdtemp()}/resnet56-stlp.pt", arch="resnet56",
                                  num_classes=info.num_classes, in_channels=info.in_channels, input_size=size)
    reloaded = paperprune.load_pruned(path)
    x = next(iter(test_loader))[0][:8]
    print("same outputs after reload:", torch.allclose(pruned.eval()(x), reloaded(x), atol=1e-5))
    print("report as a dict:", sorted(report.to_dict()))
    """),
]


# ----------------------------------------------------------------------------- 01 information bottleneck

IB = [
    md("""
    # 01 - From the Information Bottleneck to a multi-task HSIC lasso

    The abstract says the two schemes are structured lassos "guided by Information Bottleneck
    theory". This notebook follows the chain of ideas this project uses to make that concrete
    (METHOD.md section 2). The algebra is checked numerically; the step from the IB to HSIC is a
    heuristic (the HSIC bottleneck), which no number can check:

    1. the IB objective, and why HSIC stands in for mutual information (the HSIC bottleneck);
    2. the HSIC estimator on dependent and independent data;
    3. the per-layer statistics (redundancy Q, class-wise relevance R) and the identity
       $f(B) = \\tfrac12 \\sum_c \\|\\mathrm{vec}\\,\\bar L_c - \\sum_k B_{kc}\\,\\mathrm{vec}\\,\\bar K_k\\|^2
       = \\tfrac12 \\mathrm{tr}(B^\\top Q B) - \\mathrm{tr}(R^\\top B) + \\text{const}$;
    4. Q and R of a trained layer, as pictures.
    """),
    md(PROVENANCE),
    code(SMALL_CNN_IMPORTS, """
    from paperprune.ib import channel_kernels, feature_statistics, hsic, layer_statistics, normalized_hsic
    from paperprune.lasso import sglp_objective
    from paperprune.structure import ClassGraph
    """),
    md("""
    ## 1. The Information Bottleneck and the HSIC bottleneck

    For an input $X$, a label $Y$ and a representation $T$ (here: the channels a layer keeps),
    the Information Bottleneck (Tishby et al.) asks for

    $$\\min_T \\; I(X;T) - \\beta\\, I(T;Y),$$

    a representation that forgets as much of the input as it can (compression) while keeping
    what predicts the label (relevance). Mutual information between high-dimensional feature
    maps is hard to estimate. The *HSIC bottleneck* (Ma, Lewis & Kleijn, AAAI 2020) replaces
    both terms by the Hilbert-Schmidt Independence Criterion,

    $$\\min_T \\; \\mathrm{HSIC}(X,T) - \\beta\\, \\mathrm{HSIC}(T,Y), \\qquad
    \\mathrm{HSIC}(U,V) \\approx \\frac{1}{(N-1)^2}\\,\\mathrm{tr}(K_U H K_V H),$$

    with Gram matrices $K_U, K_V$ of characteristic kernels (Gaussian here) over $N$ samples
    and the centring matrix $H = I - \\mathbf 1\\mathbf 1^\\top/N$. HSIC is zero iff $U$ and $V$
    are independent (in the population limit), so it measures dependence of any kind.

    ## 2. The estimator on dependent and independent data

    $y = \\sin(2x) + 0.3\\,\\varepsilon$ depends on $x$ non-linearly (its linear correlation
    with $x$ is small); $y'$ is drawn independently. As $N$ grows the biased estimate for the
    independent pair decays like $1/N$, the dependent one settles at a positive value.
    """),
    code("""
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
    """),
    code(f"""
    {CHECK}
    # At a fixed seed the estimates are deterministic: the normalised version lies in [0, 1].
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, generator=gen, dtype=torch.float64)
    y = torch.sin(2 * x) + 0.3 * torch.randn(300, 1, generator=gen, dtype=torch.float64)
    print(f"Pearson corr(x, y)     = {{float(torch.corrcoef(torch.cat([x, y], 1).T)[0, 1]):.4g}}")
    print(f"HSIC(x, y)             = {{float(hsic(x, y)):.6g}}")
    print(f"normalised HSIC(x, y)  = {{float(normalized_hsic(x, y)):.6g}}")
    print(f"normalised HSIC(x, x)  = {{float(normalized_hsic(x, x)):.6g}}")
    """),
    md("""
    ## 3. Per-layer statistics and the multi-task HSIC regression

    For a layer with $C$ candidate channels, channel $k$'s feature maps over the $N$ calibration
    samples give a Gaussian Gram matrix $K_k$, centred and normalised:
    $\\bar K_k = H K_k H / \\|H K_k H\\|_F$. The class-wise information enters through one
    response per class $c$, the one-vs-rest label kernel
    $(L_c)_{ij} = 1[y_i = c]\\,1[y_j = c]$, centred and normalised the same way ($\\bar L_c$).
    Then

    * redundancy $Q_{km} = \\langle \\bar K_k, \\bar K_m\\rangle_F$ (normalised HSIC between channels),
    * relevance $R_{kc} = \\langle \\bar K_k, \\bar L_c\\rangle_F$ (normalised HSIC between channel $k$ and class $c$).

    The multi-task HSIC regression asks, for every class, for a combination of channel kernels
    that reproduces that class's kernel. Its coefficients are signed, as in APIB's code (HSIC
    Lasso's $B \\ge 0$ is the package's `nonnegative=True` ablation):

    $$f(B) = \\tfrac12 \\sum_c \\big\\|\\mathrm{vec}\\,\\bar L_c - \\textstyle\\sum_k B_{kc}\\,\\mathrm{vec}\\,\\bar K_k\\big\\|^2
    = \\tfrac12\\,\\mathrm{tr}(B^\\top Q B) - \\mathrm{tr}(R^\\top B) + \\tfrac12 \\sum_c \\|\\bar L_c\\|_F^2,
    \\qquad B \\in \\mathbb R^{C\\times K}.$$

    We check it on a small random layer: $N = 40$ samples of $K = 3$ classes, $C = 6$ channels
    with 5 "pixels" each, the first three of which carry the label. The package computes Q and
    R without ever forming the $N\\times N$ kernels (`feature_statistics`, tiled); `channel_kernels`
    materialises them for small $N$. The class kernels are obtained with the same function from
    the one-hot labels: a Gaussian kernel of a 0/1 indicator is $a + b\\,1[y_i=y_j \\text{ in that
    indicator}]$, and after centring and normalising it equals $\\bar L_c$ exactly (checked below
    against the definition).
    """),
    code("""
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
    """),
    code(f"""
    {CHECK}
    print("Kbar:", tuple(Kbar.shape), " Lbar:", tuple(Lbar.shape), " Q:", tuple(Q.shape), " R:", tuple(R.shape))
    print("Lbar equals H L H / ||H L H||_F:", bool(torch.allclose(Lbar, L_def, atol=1e-12)))
    print("Q equals <Kbar_k, Kbar_m>:", bool(torch.allclose(Q, torch.einsum("kij,mij->km", Kbar, Kbar), atol=1e-12)))
    print("R equals <Kbar_k, Lbar_c>:", bool(torch.allclose(R, torch.einsum("kij,cij->kc", Kbar, Lbar), atol=1e-12)))
    print("relevance R (rows: channels, columns: classes):")
    print(np.array2string(R.numpy(), precision=4, suppress_small=True))
    """),
    code(f"""
    {CHECK}
    B = torch.rand(C, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lhs = 0.5 * ((Lbar - torch.einsum("kc,kij->cij", B, Kbar)) ** 2).sum()
    no_edges = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                          torch.zeros(0, dtype=torch.float64))
    quadratic = sglp_objective(B, Q, R, no_edges, lam=0.0, gamma=0.0)   # 1/2 tr(B^T Q B) - tr(R^T B)
    const = 0.5 * float((Lbar ** 2).sum())                               # = K / 2
    rhs = quadratic + const
    print(f"left side  1/2 sum_c ||vec Lbar_c - sum_k B_kc vec Kbar_k||^2 = {{float(lhs):.6g}}")
    print(f"right side 1/2 tr(B^T Q B) - tr(R^T B) + K/2             = {{rhs:.6g}}")
    print("agree to 1e-12:", abs(float(lhs) - rhs) < 1e-12)
    """),
    md("""
    **The IB reading (a heuristic).** Expanding $f$,

    $$f(B) = -\\underbrace{\\textstyle\\sum_{k,c} B_{kc} R_{kc}}_{\\text{relevance: HSIC with each class, a stand-in for } I(T;Y)}
    + \\tfrac12 \\underbrace{\\textstyle\\sum_c \\big\\|\\sum_k B_{kc} \\bar K_k\\big\\|_F^2}_{\\text{HSIC}(T,T)\\text{ of the weighted combination}} + \\text{const}.$$

    Minimising $f$ rewards channels that depend on the classes and penalises keeping channels
    that duplicate each other. The quadratic term is HSIC$(T,T)$, not HSIC$(X,T)$: it relates to
    the compression term $I(X;T)$ only loosely (by Cauchy-Schwarz, HSIC$(X,T)^2 \\le$
    HSIC$(X,X)\\,$HSIC$(T,T)$, so a small HSIC$(T,T)$ bounds the dependence on the input). What
    removes channels is not this term but the sparsity penalties of sGLP-IB and sTLP-IB
    (notebooks 02 and 03), which make whole rows of $B$ zero: those channels are pruned. That
    this is the IB reading the paper uses is our reconstruction (APIB, Guo et al. ICCV 2023,
    makes the same argument with a single response kernel).

    ## 4. Redundancy and relevance of a trained layer

    A small CNN (defined here as a user would; the package prunes any CNN whose prunable
    layers are named) is trained for three short epochs, then the package computes Q and R for
    its second conv layer (32 channels) on 20 calibration images per class.
    """),
    code(SMALL_CNN),
    code("""
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
    """),
    md("""
    Channels are sorted by total relevance. Q's off-diagonal is far from zero: Gaussian-kernel
    features of one layer are strongly dependent on each other, which is why the regression
    needs only a few of them. R shows the class-wise structure the abstract refers to: the
    rows are far from constant, a channel is relevant to some classes and nearly independent
    of others. A single class-agnostic response (APIB) would see only one number per channel.
    """),
]


# ----------------------------------------------------------------------------- 02 sGLP-IB

SGLP = [
    md("""
    # 02 - sGLP-IB: graph-guided fused lasso over classes

    This notebook builds the class graph of a trained model, writes out the sGLP-IB objective,
    runs the package's solver (ADMM) on one layer, shows it converging and agreeing with an
    independent convex solver (cvxpy), and shows the resulting channel scores per class.
    """),
    md(PROVENANCE),
    code(SMALL_CNN_IMPORTS, """
    import cvxpy as cp

    from paperprune import reporting
    from paperprune.ib import class_embeddings, feature_statistics, layer_statistics
    from paperprune.lasso import lasso_path, solve_sglp
    from paperprune.structure import class_graph_from_embeddings
    """),
    code(SMALL_CNN),
    md("""
    ## The class graph

    The classes' mean embeddings (the input of the classifier, over the calibration set) are
    correlated across embedding dimensions; an edge $(c, d)$ joins classes with
    $|\\mathrm{corr}| > \\rho = 0.5$, with weight $w_{cd} = |\\mathrm{corr}|$ and sign
    $s_{cd} = \\mathrm{sign}(\\mathrm{corr})$ (reconstruction: Kim & Xing's graph-guided fused
    lasso, METHOD.md section 2).
    """),
    code("""
    emb = class_embeddings(model, images, labels, info.num_classes)
    graph = class_graph_from_embeddings(emb, rho=0.5)
    for (c, d), w, s in zip(graph.edges.tolist(), graph.weights.tolist(), graph.signs.tolist()):
        print(f"{info.class_names[c]:>12} -- {info.class_names[d]:<12} w = {w:.2f}  sign {int(s):+d}")
    fig = reporting.plot_class_graph(graph, info.class_names)   # a matplotlib Figure, shown explicitly
    fig.set_dpi(80)
    display(fig)
    """),
    md("""
    ## The objective

    With the layer's redundancy $Q$ and class-wise relevance $R$ (notebook 01), sGLP-IB solves,
    over signed $B \\in \\mathbb R^{C\\times K}$ (the package's default; `nonnegative=True` adds
    $B \\ge 0$, under which a negative edge fuses nothing: $|B_{kc} + B_{kd}| = B_{kc} + B_{kd}$ is
    plain extra shrinkage),

    $$F(B) = \\tfrac12\\,\\mathrm{tr}(B^\\top Q B) - \\mathrm{tr}(R^\\top B)
    + \\lambda \\sum_{k,c} |B_{kc}|
    + \\gamma \\sum_{(c,d)\\in E} w_{cd} \\sum_k |B_{kc} - s_{cd} B_{kd}|.$$

    The $\\ell_1$ term makes $B$ sparse; the fusion term pulls the scores of a channel for
    correlated classes together, so classes that the network treats alike keep or lose channels
    together. Channel $k$ is kept iff row $B_{k\\cdot}$ is non-zero; its row norm is its score.
    In the pruning pipeline $\\gamma = 0.5\\,\\lambda$ and one $\\lambda$ is shared by all layers.

    The fusion term has no closed-form prox; the package uses ADMM with an exact B-update
    (`paperprune.lasso.solve_sglp`; Chen et al.'s smoothing proximal gradient is the classical
    alternative), on a working set of channels like `solve_stlp`. Its stopping rule is a relative
    dual residual below `tol`, a relative primal residual below `tol / 10` (the returned $B$ is
    scored with its own fused differences, so that residual enters the objective directly), and
    a bound on the KKT violation of the channels held at zero below `tol`.
    """),
    code("""
    st = layer_statistics(model, [layer], images, labels, info.num_classes, dtype=torch.float64)[layer.name]
    Q, R = st.redundancy, st.relevance
    lam = 0.1 * float(R.max())
    gamma = 0.5 * lam
    sol = solve_sglp(Q, R, graph, lam, gamma, tol=1e-10, max_iter=20000)
    kept = sol.B.norm(dim=1) > 1e-7
    print(f"C = {Q.shape[0]} channels, K = {R.shape[1]} classes, lam = {lam:.4g}, gamma = {gamma:.4g}")
    print(f"converged: {sol.converged} after {sol.iterations} iterations, certificate {sol.certificate}")
    print(f"objective {sol.objective:.8g}; channels kept: {int(kept.sum())} of {Q.shape[0]}")
    """),
    md("""
    ## Convergence

    `solve_sglp` returns the final iterate, not a history, so we rerun it with an increasing
    iteration budget (each run from zero, no warm start) and plot the objective gap to the
    converged value.
    """),
    code("""
    budgets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    runs = [solve_sglp(Q, R, graph, lam, gamma, tol=1e-12, max_iter=m) for m in budgets]
    gap = [max(r.objective - sol.objective, 1e-16) for r in runs]
    fig, ax = plt.subplots()
    ax.loglog(budgets, gap, "o-", label="F(B_t) - F*")
    ax.loglog(budgets, [r.residual for r in runs], "s--", label="max(primal, dual) residual")
    ax.set_xlabel("ADMM iterations")
    ax.set_title("sGLP-IB solver on one trained layer")
    ax.legend()
    fig.tight_layout()
    """),
    md("""
    ## Agreement with cvxpy

    The same problem written directly in cvxpy (Clarabel interior-point solver) on a small
    deterministic instance: 8 random channels of 40 samples, 4 classes, a seeded random class
    graph. The test suite checks the same on other instances; the requirement is a relative
    objective gap below $10^{-5}$.
    """),
    code("""
    def sglp_cvxpy(Q, R, graph, lam, gamma):
        C, K = R.shape
        w, V = np.linalg.eigh(Q.numpy())
        root = np.sqrt(np.clip(w, 0, None))[:, None] * V.T          # Q = root^T root
        D = graph.incidence(K).numpy()                              # (B D^T)[k, e] = B[k, c_e] - s_e B[k, d_e]
        B = cp.Variable((C, K))
        F = (0.5 * cp.sum_squares(root @ B) - cp.sum(cp.multiply(R.numpy(), B)) + lam * cp.sum(cp.abs(B))
             + gamma * cp.sum(cp.abs(B @ D.T) @ graph.weights.numpy()))
        problem = cp.Problem(cp.Minimize(F))
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        return problem.value, B.value

    gen = torch.Generator().manual_seed(0)
    y_small = torch.arange(40) % 4
    feats = torch.randn(40, 8, 6, generator=gen, dtype=torch.float64)
    feats[:, :4] += y_small[:, None, None].double()
    small = feature_statistics(feats, y_small, 4, dtype=torch.float64)
    small_graph = class_graph_from_embeddings(torch.randn(4, 16, generator=gen, dtype=torch.float64), rho=0.0)
    lam_s = 0.1 * float(small.relevance.max())
    ours = solve_sglp(small.redundancy, small.relevance, small_graph, lam_s, 0.5 * lam_s, tol=1e-10)
    ref_value, ref_B = sglp_cvxpy(small.redundancy, small.relevance, small_graph, lam_s, 0.5 * lam_s)
    """),
    code(f"""
    {CHECK}
    print("edges:", small_graph.num_edges, " signs:", small_graph.signs.int().tolist())
    print(f"paperprune ADMM objective: {{ours.objective:.5g}}")
    print(f"cvxpy (Clarabel) objective: {{ref_value:.5g}}")
    print("relative gap < 1e-5:", abs(ours.objective - ref_value) / abs(ref_value) < 1e-5)
    print("same kept channels:", (ours.B.norm(dim=1) > 1e-6).tolist() == (np.linalg.norm(ref_B, axis=1) > 1e-6).tolist())
    """),
    md("""
    ## Channel scores per class

    The solution of the trained layer: $B$ (channels x classes) and its row norms, the channel
    scores. Rows that are entirely zero are the channels sGLP-IB prunes at this $\\lambda$;
    columns of classes joined by a positive edge look alike.
    """),
    code("""
    scores = sol.B.norm(dim=1)
    order = torch.argsort(scores, descending=True)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.5), gridspec_kw={"width_ratios": [2, 1]})
    vmax = float(sol.B.abs().max())
    im = axes[0].imshow(sol.B[order].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    axes[0].set_xticks(range(info.num_classes), info.class_names, rotation=90, fontsize=6)
    axes[0].set_ylabel("channel (by score)")
    axes[0].set_title("B (sGLP-IB)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[1].barh(range(len(order)), scores[order].numpy(), color=np.where(kept[order], "tab:blue", "lightgray"))
    axes[1].invert_yaxis()
    axes[1].set_title("channel score ||B_k.||")
    fig.tight_layout()
    """),
    md("""
    ## Along the lambda path

    Larger $\\lambda$ empties more rows. `lasso_path` solves a decreasing sequence of
    $\\lambda$ with warm starts. In the pruning pipeline (`paperprune.prune(..., method="sglp")`)
    one such problem is solved per layer and the one shared $\\lambda$ is bisected until the
    pruned model meets the requested MACs reduction (notebook 00). With signed coefficients the
    support grows to every non-dead channel as $\\lambda \\to 0$, so one $\\lambda$ reaches any
    target; under `nonnegative=True` it stops at the non-negative least-squares support, which
    on redundant layers is small.
    """),
    code("""
    fractions = [0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0]
    path = lasso_path(lambda l, B0: solve_sglp(Q, R, graph, l, 0.5 * l, tol=1e-9, B0=B0),
                      [f * float(R.max()) for f in fractions])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(fractions, [int((r.B.norm(dim=1) > 1e-7).sum()) for r in path], "o-")
    ax.set_xlabel("lambda / max R   (gamma = lambda / 2)")
    ax.set_ylabel("channels kept (of 32)")
    ax.set_title("sGLP-IB on one layer along the lambda path")
    fig.tight_layout()
    """),
]


# ----------------------------------------------------------------------------- 03 sTLP-IB

STLP = [
    md("""
    # 03 - sTLP-IB: tree-guided group lasso over classes

    This notebook builds class trees (from the model's class embeddings, and from the known
    Fashion-MNIST taxonomy tops / footwear / other), shows the exact tree-structured proximal
    operator on a small example against cvxpy, runs the package's sTLP-IB solver (ADMM with
    that prox) on a trained layer, shows the group norms per tree node, and compares the kept
    channels with sGLP-IB's at the same $\\lambda$.
    """),
    md(PROVENANCE),
    code(SMALL_CNN_IMPORTS, """
    import cvxpy as cp
    from scipy.cluster.hierarchy import linkage

    from paperprune import reporting
    from paperprune.ib import class_embeddings, layer_statistics
    from paperprune.lasso import solve_sglp, solve_stlp, tree_prox
    from paperprune.structure import (ClassTree, class_graph_from_embeddings, class_tree_from_embeddings,
                                      class_tree_from_taxonomy)
    """),
    code(SMALL_CNN),
    md("""
    ## Class trees

    **From the embeddings** (reconstruction): average-linkage agglomerative clustering of the
    class-mean embeddings with correlation distance; the node weights follow Kim & Xing
    (ICML 2010) from the normalised merge heights $h_v$: $w_v = (1 - h_v)\\prod_{m \\text{ ancestor}} h_m$
    for an internal node and $\\prod_{m} h_m$ for a leaf.
    """),
    code("""
    emb = class_embeddings(model, images, labels, info.num_classes)
    fig = reporting.plot_class_tree(linkage(emb.double().numpy(), method="average", metric="correlation"),
                                    info.class_names)
    fig.set_dpi(80)
    display(fig)
    tree = class_tree_from_embeddings(emb)
    print(f"{tree.num_nodes} nodes (10 leaves, 8 internal, the root)")
    """),
    md("""
    **From the taxonomy**: Fashion-MNIST has a natural three-level hierarchy. Leaves weigh 1/2
    under a superclass, superclasses 1/2, the root 0 (Kim & Xing's formula with fixed heights
    1/2 and 1; a choice of this project).
    """),
    code(f"""
    {CHECK}
    taxonomy_tree = class_tree_from_taxonomy(info.taxonomy, info.num_classes)
    print("taxonomy:", info.taxonomy)
    for group, w in zip(taxonomy_tree.groups, taxonomy_tree.weights.tolist()):
        print(f"  w = {{w:.3g}}  {{[info.class_names[c] for c in group]}}")
    """),
    code("""
    fig = reporting.plot_class_tree(taxonomy_tree, info.class_names)
    fig.set_dpi(80)
    display(fig)
    """),
    md("""
    ## The objective and the tree prox

    sTLP-IB solves, over $B \\in \\mathbb R_{\\ge 0}^{C\\times K}$,

    $$F(B) = \\tfrac12\\,\\mathrm{tr}(B^\\top Q B) - \\mathrm{tr}(R^\\top B)
    + \\lambda \\sum_k \\sum_{v} w_v\\, \\|B_{k, G_v}\\|_2 ,$$

    where $G_v$ is the set of classes under tree node $v$ (leaves and root included). A channel
    can be switched off for a single class (leaf group) or for a whole superclass (internal
    node); the tree decides which classes share the decision. The root's group would switch a
    channel off everywhere, but under Kim & Xing's weights (and the taxonomy's) the root weighs
    $w_{\\mathrm{root}} = 0$ (printed below): a channel goes when all its superclass groups go.

    The penalty's proximal operator is exact for a tree (Jenatton et al., JMLR 2011): group
    soft-thresholding $x_G \\leftarrow x_G \\max(0, 1 - t\\,w_G/\\|x_G\\|)$ applied from the leaves
    to the root, on signed rows (the package's default). With $B \\ge 0$ (`nonnegative=True`) it
    is that operator applied to $\\max(x, 0)$. A two-level tree
    over four classes:
    """),
    code("""
    small_tree = ClassTree(groups=[[0], [1], [2], [3], [0, 1], [2, 3], [0, 1, 2, 3]],
                           weights=[0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.5])
    x = torch.tensor([[1.2, 0.9, 0.35, -0.2]], dtype=torch.float64)
    t = 0.4

    def prox_cvxpy(x, tree, t, nonneg):
        b = cp.Variable(x.shape[1], nonneg=nonneg)
        penalty = sum(w * cp.norm(b[g], 2) for g, w in zip(tree.groups, tree.weights.tolist()))
        cp.Problem(cp.Minimize(0.5 * cp.sum_squares(b - x[0].numpy()) + t * penalty)).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        return b.value

    signed = tree_prox(x, small_tree, t, nonnegative=False)
    nonneg = tree_prox(x, small_tree, t, nonnegative=True)
    ref_signed = prox_cvxpy(x, small_tree, t, nonneg=False)
    ref_nonneg = prox_cvxpy(x, small_tree, t, nonneg=True)
    """),
    code(f"""
    {CHECK}
    print("x                       ", np.round(x[0].numpy(), 6))
    print("prox (signed, the default)", np.round(signed[0].numpy(), 6))
    print("prox (B >= 0, nonnegative)", np.round(nonneg[0].numpy(), 6))
    print("matches cvxpy, signed:  ", bool(np.allclose(signed[0].numpy(), ref_signed, atol=1e-6)))
    print("matches cvxpy, B >= 0:  ", bool(np.allclose(nonneg[0].numpy(), ref_nonneg, atol=1e-6)))
    """),
    code("""
    fig, ax = plt.subplots(figsize=(5, 2.8))
    pos = np.arange(4)
    ax.bar(pos - 0.25, x[0].numpy(), 0.25, label="x", color="lightgray")
    ax.bar(pos, signed[0].numpy(), 0.25, label="tree prox")
    ax.bar(pos + 0.25, nonneg[0].numpy(), 0.25, label="tree prox, B >= 0")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(pos, ["class 0", "class 1", "class 2", "class 3"])
    ax.set_title("groups {0,1} and {2,3} under one root, t = 0.4")
    ax.legend(fontsize=7)
    fig.tight_layout()
    """),
    md("""
    Classes 0 and 1 survive together (shrunk); the weaker group {2, 3} is set to zero as a
    whole by its internal node, even though class 2 alone would have survived its own leaf
    threshold. That is the structured sparsity sTLP-IB relies on.

    ## The solver on a trained layer

    `solve_stlp` is ADMM: an exact B-update through the eigendecomposition of $Q$, and the exact
    tree prox (with $B \\geq 0$) as the X-update. It runs on a working set of channels, adding
    any channel held at zero whose KKT condition fails, and stops when the relative primal and
    dual residuals and the zero channels' KKT violation are all below `tol`. We use the taxonomy
    tree and rerun with an increasing iteration budget to show convergence.
    """),
    code("""
    st = layer_statistics(model, [layer], images, labels, info.num_classes, dtype=torch.float64)[layer.name]
    Q, R = st.redundancy, st.relevance
    lam = 0.1 * float(R.max())
    sol = solve_stlp(Q, R, taxonomy_tree, lam, tol=1e-10, max_iter=20000)
    print(f"lam = {lam:.4g}: converged {sol.converged} after {sol.iterations} iterations, "
          f"residual {sol.residual:.2e}; objective {sol.objective:.8g}")
    budgets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    runs = [solve_stlp(Q, R, taxonomy_tree, lam, tol=1e-14, max_iter=m) for m in budgets]
    fig, ax = plt.subplots()
    ax.loglog(budgets, [max(r.objective - sol.objective, 1e-16) for r in runs], "o-", label="F(B_t) - F*")
    ax.loglog(budgets, [r.residual for r in runs], "s--", label="max(primal, dual, KKT) residual")
    ax.set_xlabel("ADMM iterations")
    ax.set_title("sTLP-IB solver on one trained layer")
    ax.legend()
    fig.tight_layout()
    """),
    md("""
    ## Group norms per tree node

    $\\|B_{k,G_v}\\|_2$ for every channel $k$ (rows) and node $v$ (columns: the ten leaves, the
    three superclasses, the root). A zero at a superclass node means the channel was switched
    off for that whole superclass.
    """),
    code("""
    mask = taxonomy_tree.mask.double()                      # (V, K) node membership
    norms = torch.sqrt((sol.B ** 2) @ mask.T)                # (C, V)
    node_names = info.class_names + list(info.taxonomy) + ["root"]
    order = torch.argsort(norms[:, -1], descending=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    im = ax.imshow(norms[order].numpy(), cmap="Greens", aspect="auto")
    ax.set_xticks(range(len(node_names)), node_names, rotation=90, fontsize=6)
    ax.set_ylabel("channel (by root norm)")
    ax.set_title("||B_k,G_v|| per tree node")
    fig.colorbar(im, fraction=0.046)
    fig.tight_layout()
    superclass = norms[:, info.num_classes:-1] > 1e-7
    print("kept channels:", int((norms[:, -1] > 1e-7).sum()), "of", Q.shape[0])
    print("kept channels active per superclass:", dict(zip(info.taxonomy, superclass.sum(0).tolist())))
    """),
    md("""
    ## sTLP-IB against sGLP-IB at the same lambda

    Both criteria see the same Q and R; they differ only in how classes are tied together (a
    tree of groups versus pairwise fusion on a graph, here $\\gamma = 0.5\\lambda$ as in the
    pipeline). At the same $\\lambda$ they keep overlapping but different channel sets. (In the
    pipeline each criterion gets its own $\\lambda$, bisected to the same MACs budget.)
    """),
    code("""
    graph = class_graph_from_embeddings(emb, rho=0.5)
    sglp = solve_sglp(Q, R, graph, lam, 0.5 * lam, tol=1e-10, max_iter=20000)
    kept_t = set((sol.B.norm(dim=1) > 1e-7).nonzero().flatten().tolist())
    kept_g = set((sglp.B.norm(dim=1) > 1e-7).nonzero().flatten().tolist())
    print(f"sTLP-IB keeps {len(kept_t)} channels, sGLP-IB keeps {len(kept_g)}, both keep {len(kept_t & kept_g)} "
          f"(Jaccard {len(kept_t & kept_g) / max(len(kept_t | kept_g), 1):.2f})")
    print("only sTLP-IB:", sorted(kept_t - kept_g), " only sGLP-IB:", sorted(kept_g - kept_t))
    both = sorted(kept_t | kept_g)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), sharey=True)
    for ax, B, title in ((axes[0], sol.B, "sTLP-IB (taxonomy tree)"), (axes[1], sglp.B, "sGLP-IB (class graph)")):
        ax.imshow(B[both].numpy(), cmap="Blues", aspect="auto")
        ax.set_xticks(range(info.num_classes), info.class_names, rotation=90, fontsize=6)
        ax.set_title(title)
    axes[0].set_yticks(range(len(both)), both, fontsize=6)
    axes[0].set_ylabel("channel (kept by either)")
    fig.tight_layout()
    """),
]

NOTEBOOKS = {
    "00_quickstart.ipynb": QUICKSTART,
    "01_information_bottleneck.ipynb": IB,
    "02_sglp_ib.ipynb": SGLP,
    "03_stlp_ib.ipynb": STLP,
}


def build(cells) -> nbformat.NotebookNode:
    nb = notebook(cells)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()


def clean(nb: nbformat.NotebookNode) -> None:
    """Drop what changes from run to run without meaning: timestamps, stderr, widget state."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                continue
            data = out.get("data", {})
            data.pop("application/vnd.jupyter.widget-view+json", None)
            if out.output_type in ("display_data", "execute_result") and not data:
                continue
            kept.append(out)
        cell.outputs = kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook prefixes to build (default: all), e.g. 00 02")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without outputs")
    parser.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    if not names:
        parser.error(f"no notebook matches {args.only}; known: {', '.join(NOTEBOOKS)}")
    for name in names:
        nb = build(NOTEBOOKS[name])
        if not args.no_execute:
            start = time.perf_counter()
            execute(nb, args.timeout)
            clean(nb)
            print(f"{name}: executed in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
