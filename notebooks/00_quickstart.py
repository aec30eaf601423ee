# %% [markdown]
# # 00 - Quickstart: prune a Fashion-MNIST ResNet-56 with one call, and compare it fairly
#
# This notebook prunes half of the multiply-accumulates (MACs) of a trained ResNet-56 with
# **sTLP-IB** through the single call `paperprune.prune(...)`, shows what was removed and what
# the pruned model costs, and then asks whether the criterion mattered: it prunes the same model
# to the same budget with two controls (**random** channels and the **L1** norm of the filters),
# gives every model, the unpruned one included, the same one epoch of fine-tuning, and compares.
#
# It uses the ResNet-56 shipped with the package (trained on all 60,000 Fashion-MNIST training
# images; `paperprune/resources/pretrained/resnet56-fashion-mnist.json` records how) and, to run
# on a CPU in a few minutes, small class-balanced subsets: 20 calibration images per class,
# 500 training images for the fine-tuning epoch and 500 test images. The accuracies are
# therefore coarse (see the noise estimate below the results); the full experiments
# (`python -m paperprune.lab.reproduce`) fine-tune for real on the whole data.
#
# **What comes from the paper and what is reconstruction.** Only the abstract of Liu et al.,
# *Automatic Pruning via Structured Lasso with Class-wise Information* (arXiv 2502.09125) is
# available: the two schemes and their names, **sGLP-IB** and **sTLP-IB**, that they are
# structured lassos over filters guided by IB theory and class-wise relatedness, and the
# headline numbers. The statistics, objectives, class tree, solvers and the automatic budget
# used here are this project's reconstruction (`METHOD.md` sections 1-2).

# %%
# %matplotlib inline
import warnings

with warnings.catch_warnings():  # tqdm's notice that ipywidgets is absent (progress bars are off here)
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch

import paperprune
from paperprune.features import adapt_batchnorm
from paperprune.lab.experiment import measure_latency
from paperprune.models import prunable_layers
from paperprune.lab.train import TrainConfig, evaluate, train
from paperprune.lab.tutorial import fashion_mnist, shipped_resnet56

plt.rcParams.update({"figure.dpi": 90, "font.size": 9})
size = (1, 32, 32)  # Fashion-MNIST, zero-padded to 32x32, one channel

# %%
# NBVAL_CHECK_OUTPUT
data = fashion_mnist(calibration_per_class=20, train_per_class=50, test_per_class=50)
model = shipped_resnet56()
macs, params = paperprune.count_flops_params(model, size)
print("classes:", data.info.class_names)
print("calibration set:", tuple(data.images.shape), " fine-tuning images:", len(data.train_loader.labels),
      " test images:", len(data.test_loader.labels))
print("prunable layers:", len(prunable_layers(model)), f"  MACs: {macs:,}   params: {params:,}")

# %% [markdown]
# ResNet-56's prunable channels are the inner channels of its 27 basic blocks (the residual
# widths are kept, as in HRank and APIB). With three input channels its conv + linear MACs are
# the published 125.49M; with one, the first conv is cheaper.

# %%
before = evaluate(model, data.test_loader, "cpu")
print(f"shipped ResNet-56: top-1 {before['top1']:.1f}% on the 500 test images")

# %% [markdown]
# ## One call: remove half of the MACs with sTLP-IB
#
# `paperprune.prune` takes any iterable of `(images, labels)` batches and draws a class-balanced
# calibration set from it; here we hand it one fixed batch of 20 un-augmented training images
# per class, so that every criterion below sees the same images. It computes each layer's
# statistics (redundancy Q, class-wise relevance R; notebook 01), builds the class tree from the
# model's class embeddings (notebook 03) and bisects **one global level** until the pruned model
# has 50 % fewer MACs (within 1 %). Per-layer widths are not set by hand: they fall out of the
# lasso. The input model is left untouched.

# %%
calibration = [(data.images, data.labels)]
pruned, report = paperprune.prune(model, calibration, method="stlp", flops_reduction=0.5, input_size=size,
                                  progress=False)
print(report.summary().splitlines()[0])
print("report.criterion:", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in report.criterion.items()})

# %% [markdown]
# **What `level` is.** The budget rule bisects one number, the *level*, shared by all layers.
# For the lasso criteria the level $u$ sets the lasso weight $\lambda = \lambda_{lo}\,e^{u}$,
# where $\lambda_{hi}$ is the first doubling of $\max|R|$ at which every layer's $B$ is zero and
# $\lambda_{lo} = 10^{-4}\lambda_{hi}$; `report.criterion["lam"]` is that $\lambda$. A channel is
# kept iff its row of $B$ is non-zero. `lasso_support` counts the channels the lasso kept by
# itself; `relevance_threshold` is `None` when no channel was added by the relevance top-up
# (which only the `nonnegative=True` ablation can need): here the lasso decided, apart from
# what the per-layer floor `omega = 4` adds to keep at least 4 channels in every layer (both
# counts printed below). For the score criteria (random, L1, HRank) the level is a threshold on
# each layer's scores divided by their maximum, with the same floor.

# %%
assert report.criterion["relevance_threshold"] is None     # no relevance top-up
assert abs(report.macs_reduction - 0.5) <= 0.01
kept_total = sum(row["width_after"] for row in report.layers)
print(f"channels kept: {kept_total}, of which the lasso kept {report.criterion['lasso_support']} and the floor "
      f"omega = 4 added {kept_total - report.criterion['lasso_support']}")

# %% [markdown]
# ## The same budget with two controls
#
# A fair comparison changes one thing: the criterion. Same model, same calibration images, same
# budget, same floor; then the same fine-tuning for every model, including the unpruned one,
# so that "pruning and fine-tuning" is not credited with what the extra epoch alone does.

# %%
models = {"unpruned": model, "sTLP-IB": pruned}
reports = {"sTLP-IB": report}
for method, name in (("l1", "L1"), ("random", "random")):
    models[name], reports[name] = paperprune.prune(model, calibration, method=method, flops_reduction=0.5,
                                                   input_size=size, progress=False)
for name, r in reports.items():
    print(f"{name:>8}: MACs -{100 * r.macs_reduction:.1f}%, params -{100 * r.params_reduction:.1f}%, "
          f"level {r.level:.4g}")

# %%
fig, ax = plt.subplots(figsize=(9, 3))
x = np.arange(len(report.layers))
ax.bar(x, [r["width_before"] for r in report.layers], color="0.88", label="before")
for i, (name, r) in enumerate(reports.items()):
    ax.bar(x + (i - 1) * 0.27, [row["width_after"] for row in r.layers], 0.27, label=name)
ax.set_xticks(x, [r["name"].removesuffix(".conv1") for r in report.layers], rotation=90, fontsize=7)
ax.set_ylabel("inner width (channels)")
ax.set_title("Kept channels of every ResNet-56 block at 50 % fewer MACs")
ax.legend(ncol=4, fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## Accuracy right after pruning, after re-estimating BatchNorm, and after one epoch
#
# Right after surgery every BatchNorm still holds the running statistics of the unpruned
# network, whose inputs have changed; re-estimating them on a few images (adaptive BN, as
# EagleEye does; `paperprune.features.adapt_batchnorm`) repairs that without training. Then every
# model, the unpruned one included, gets the same one epoch of SGD (lr 0.01, cosine, batch 50)
# over the 500 training images.

# %%
results = {}
for name, m in models.items():
    raw = before["top1"] if name == "unpruned" else evaluate(m, data.test_loader, "cpu")["top1"]
    adapt_batchnorm(m, calibration, 200, "cpu")  # the 200 calibration images, no labels used
    adapted = evaluate(m, data.test_loader, "cpu")["top1"]
    tuned = train(m, data.train_loader, data.test_loader, TrainConfig(epochs=1, lr=0.01, batch_size=50),
                  tempfile.mkdtemp(), device="cpu", progress=False)
    results[name] = (raw, adapted, tuned["top1"])
n = len(data.test_loader.labels)
print(f"{'':>9}  {'MACs':>6}  {'right after':>11}  {'BN re-estimated':>15}  {'+ 1 epoch':>9}")
for name, (raw, adapted, tuned) in results.items():
    cut = f"-{100 * reports[name].macs_reduction:.0f}%" if name in reports else "0%"
    print(f"{name:>9}  {cut:>6}  {raw:>10.1f}%  {adapted:>14.1f}%  {tuned:>8.1f}%")
for accuracy in (0.92, 0.85):
    print(f"binomial standard error of one accuracy on {n} images near {100 * accuracy:.0f}%: "
          f"{100 * np.sqrt(accuracy * (1 - accuracy) / n):.1f} points")

# %% [markdown]
# Read the table with its noise in mind: one accuracy on 500 images has a standard error of
# 1.2 points at 92 % and 1.6 points at 85 %, so differences of a few points are not evidence.
# Right after surgery every pruned model sits near chance (10 %): the stale BatchNorm
# statistics, not the criterion, dominate there. After re-estimating them, and after the epoch,
# the controls say how much of the pruned models' accuracy is owed to the criterion rather
# than to the budget and the fine-tuning, and the unpruned model with the same extra epoch says
# what that epoch alone does. One model, one seed and one epoch cannot rank criteria: a margin
# over random channels on this draw says nothing about other seeds, other budgets or the
# strongest class-agnostic criterion (L1, HRank, APIB). The recorded grid of criteria, FLOPs
# targets and seeds (`python -m paperprune.lab.reproduce`) is where that is measured, and
# `05_does_it_pay` reads it, with intervals over seeds.
#
# ## What the pruned model costs
#
# MACs and parameters (conv + linear, `METHOD.md` section 4) and the median CPU wall time of
# one forward pass at batch size 1 and 64 (this machine, so the absolute numbers vary).

# %%
for name in ("sTLP-IB",):
    macs_after, params_after = paperprune.count_flops_params(models[name], size)
    print(f"{name}: MACs {macs:,} -> {macs_after:,} (-{100 * (1 - macs_after / macs):.1f}%), "
          f"params {params:,} -> {params_after:,} (-{100 * (1 - params_after / params):.1f}%)")
cpu = torch.device("cpu")
for bs in (1, 64):
    base_ms = measure_latency(model, size, bs, cpu, repeats=3)
    pruned_ms = measure_latency(models["sTLP-IB"], size, bs, cpu, repeats=3)
    print(f"CPU latency, batch {bs:>2}: {base_ms:7.1f} ms -> {pruned_ms:7.1f} ms  ({base_ms / pruned_ms:.2f}x)")

# %% [markdown]
# ## Saving and loading the pruned model
#
# `save_pruned` stores plain tensors and the layer widths (no pickled modules); `load_pruned`
# rebuilds the architecture and loads the weights.

# %%
path = paperprune.save_pruned(models["sTLP-IB"], f"{tempfile.mkdtemp()}/resnet56-stlp.pt", arch="resnet56",
                              num_classes=10, in_channels=1, input_size=size)
reloaded = paperprune.load_pruned(path)
x = data.images[:8]
assert torch.allclose(models["sTLP-IB"].eval()(x), reloaded(x), atol=1e-5)
print("reloaded model gives the same outputs; report fields:", sorted(report.to_dict()))
