# %% [markdown]
# # 00 - Quickstart: prune a Fashion-MNIST ResNet-56 with one call
#
# This notebook trains a ResNet-56 very briefly on a subset of Fashion-MNIST, prunes half of
# its multiply-accumulates (MACs) with **sTLP-IB** through the single call
# `paperprune.prune(...)`, and shows what was removed, what the pruned model costs (MACs,
# parameters, CPU latency) and its accuracy before and after a short fine-tuning.
#
# To run on a laptop CPU in a couple of minutes, the model sees only 3,000 training images for
# two epochs, so its accuracy is far below a converged model's; the point is the mechanics. The
# full experiments (`python -m paperprune run`, `make reproduce`) train and fine-tune for real.

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

# %% [markdown]
# ## Data and model
#
# `make_loaders(..., per_class=300)` keeps a class-balanced subset of 300 training images per
# class. For speed we also evaluate on a class-balanced subset of 1,000 test images.
# Fashion-MNIST images are zero-padded to 32x32, one channel.

# %%
train_loader, _, info = make_loaders("fashion-mnist", per_class=300, batch_size=32)
test_x, test_y = class_balanced_batch(*load_tensors("fashion-mnist", "test"), 100)
test_loader = DeviceLoader(test_x, test_y, batch_size=500, mean=info.mean, std=info.std, train=False)
size = input_size(info)
print(info.name, "classes:", info.class_names)

# %%
# NBVAL_CHECK_OUTPUT
model = create_model("resnet56", num_classes=info.num_classes, in_channels=info.in_channels)
macs, params = paperprune.count_flops_params(model, size)
print("input size:", size)
print("prunable layers:", len(prunable_layers(model)))
print(f"MACs: {macs:,}   params: {params:,}")

# %% [markdown]
# ResNet-56's prunable channels are the inner channels of its 27 basic blocks (the residual
# widths are kept, as in HRank/APIB). Its conv + linear MACs on 3x32x32 CIFAR inputs are the
# published 125.49M; with one input channel the first conv is cheaper.
#
# ## A (very) short training run

# %%
trained = train(model, train_loader, test_loader, TrainConfig(epochs=2, lr=0.02, batch_size=32),
                tempfile.mkdtemp(), device="cpu", progress=False)
before = evaluate(model, test_loader, "cpu")
print(f"test top-1 before pruning: {before['top1']:.1f}%")

# %% [markdown]
# ## One call: prune half of the MACs with sTLP-IB
#
# `paperprune.prune` draws a class-balanced calibration set (20 images per class) from the
# loader, computes each layer's IB statistics (redundancy Q, class-wise relevance R), builds
# the class tree from the model's class embeddings, and bisects one global lasso weight lam
# until the pruned model has 50 % fewer MACs (within 1 %). Per-layer widths are not set by
# hand: they fall out of the lasso. The input model is left untouched.

# %%
pruned, report = paperprune.prune(model, train_loader, method="stlp", flops_reduction=0.5,
                                  input_size=size, progress=False)
print(report.summary())

# %%
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

# %% [markdown]
# ## What it costs
#
# MACs and parameters (conv + linear, METHOD.md section 4) and the median CPU wall time of one
# forward pass at batch size 1 and 64 (this machine, so the absolute numbers vary).

# %%
macs_after, params_after = paperprune.count_flops_params(pruned, size)
print(f"MACs   {macs:>12,} -> {macs_after:>12,}  (-{100 * (1 - macs_after / macs):.1f}%)")
print(f"params {params:>12,} -> {params_after:>12,}  (-{100 * (1 - params_after / params):.1f}%)")
cpu = torch.device("cpu")
for bs in (1, 64):
    base_ms = measure_latency(model, size, bs, cpu, repeats=5)
    pruned_ms = measure_latency(pruned, size, bs, cpu, repeats=5)
    print(f"CPU latency, batch {bs:>2}: {base_ms:7.1f} ms -> {pruned_ms:7.1f} ms  ({base_ms / pruned_ms:.2f}x)")

# %% [markdown]
# ## Accuracy before and after
#
# Right after surgery the pruned network has lost channels its later layers relied on; a
# short fine-tuning (here one epoch on the same 3,000 images, a stand-in for the 150-epoch
# recipe of the full experiments) recovers much of it.

# %%
after = evaluate(pruned, test_loader, "cpu")
train(pruned, train_loader, test_loader, TrainConfig(epochs=1, lr=0.01, batch_size=32),
      tempfile.mkdtemp(), device="cpu", progress=False)
tuned = evaluate(pruned, test_loader, "cpu")
print(f"top-1 before pruning        {before['top1']:5.1f}%")
print(f"top-1 right after pruning   {after['top1']:5.1f}%")
print(f"top-1 after 1-epoch finetune {tuned['top1']:5.1f}%")

# %% [markdown]
# ## Saving and loading the pruned model
#
# `save_pruned` stores plain tensors and the layer widths (no pickled modules);
# `load_pruned` rebuilds the architecture and loads the weights.

# %%
path = paperprune.save_pruned(pruned, f"{tempfile.mkdtemp()}/resnet56-stlp.pt", arch="resnet56",
                              num_classes=info.num_classes, in_channels=info.in_channels, input_size=size)
reloaded = paperprune.load_pruned(path)
x = next(iter(test_loader))[0][:8]
print("same outputs after reload:", torch.allclose(pruned.eval()(x), reloaded(x), atol=1e-5))
print("report as a dict:", sorted(report.to_dict()))
