# %% [markdown]
# # Pruning curves: top-1 against FLOPs reduction, no fine-tuning
#
# Every criterion prunes the same trained baseline to several FLOPs targets, for several
# calibration seeds, and the pruned model is scored on the test set at once: raw, and after
# re-estimating its BatchNorm statistics on a few hundred training images (adaptive BN, as
# EagleEye, ECCV 2020, uses it). This is the cheapest measurement that tells criteria apart:
# fine-tuning hides much of a bad selection. Statistics are computed once per (criterion, seed)
# and reused for every target. A criterion entry `name:uniform` runs the criterion under the
# uniform allocation (every layer keeps the same fraction of its channels, the L1-norm and HRank
# papers' protocol, METHOD.md section 2, "Allocation") instead of the global one; its points
# are rows of their own. Done by `paperprune.lab.curves.run` (resumable: a rerun skips the
# finished (criterion, seed) chunks); `python -m paperprune.lab.reproduce` runs this notebook
# through papermill and leaves the executed copy next to `curves.json`.

# %% tags=["parameters"]
dataset = "synthetic"
arch = "resnet56"
pretrained = None
weights = None
methods = ["random", "l1", "l1:uniform"]  # criterion entries: a name (global allocation) or name:uniform
targets = [0.3, 0.6]
seeds = [0, 1]
samples_per_class = 3
bn_images = 36
test_per_class = 4
criterion_options = {}  # e.g. {"nonnegative": True}: an ablation variant (paperprune.lab.curves.check_options)
precision = "fp32"  # of the test evaluations; "auto": bf16 autocast where the CPU has it
data_root = None
out = "runs/curves-demo"
threads = None
device = "cpu"  # of selection and evaluation: "cpu", "cuda", "cuda:N" or "auto"
progress = True

# %%
import torch

from paperprune import create_model
from paperprune.lab import curves
from paperprune.lab.data import dataset_info

if threads:
    torch.set_num_threads(int(threads))
if pretrained is None and weights is None:  # the demo: an untrained model saved as the "baseline"
    from pathlib import Path

    info = dataset_info(dataset, data_root)
    torch.manual_seed(0)
    weights = str(Path(out) / "untrained-baseline.pt")
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(create_model(arch, info.num_classes, info.in_channels).state_dict(), weights)
record = curves.run(dataset, arch, out, pretrained=pretrained, weights=weights, methods=methods, targets=targets,
                    seeds=seeds, samples_per_class=samples_per_class, bn_images=bn_images,
                    test_per_class=test_per_class, criterion_options=criterion_options, precision=precision,
                    data_root=data_root, device=device, progress=progress)
variant = curves.variant_name(record["config"]["criterion_options"]) or "no options"
print(f"{len(record['points'])} points ({variant}) on {record['config']['test_images']} test images in "
      f"{record['timings']['wall_s']:.0f} s")

# %% [markdown]
# Mean over the calibration seeds, top-1 in percent, raw and after adaptive BN, per criterion and
# allocation (n and the sample std per cell are in `record["summary"]`).

# %%
import pandas as pd

rows = {key: pd.DataFrame(record["summary"][key]) for key in ("top1", "top1_bn")}
table = pd.concat({key: df.pivot(index=["method", "allocation"], columns="target", values="mean")
                   for key, df in rows.items()}, axis=1)
table.round(2)
