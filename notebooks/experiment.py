# %% [markdown]
# # One pruning run
#
# Pretrain (or load) the baseline, compute the class-wise statistics, select channels under the automatic budget, prune, fine-tune, evaluate. Everything is done by `paperprune.lab.experiment.run_experiment`; this notebook is its parameterised, executed record. `python -m paperprune.lab.reproduce` runs it through papermill and leaves the executed copy next to the run's `run.json`. Stages are cached: re-executing resumes an interrupted run.

# %% tags=["parameters"]
# Any field of paperprune.lab.experiment.RunConfig can be set here or injected by papermill (as
# `python -m paperprune.lab.reproduce` does); a field left unset takes RunConfig's own default, so
# this cell lists only what differs from it: a quick demo on the synthetic dataset. (A latency
# budget instead of the MACs one: latency_reduction = 0.4 and flops_reduction = None.)
dataset = "synthetic"
arch = "resnet56"
method = "stlp"
flops_reduction = 0.5
pretrain_epochs = 1
samples_per_class = 5
batch_size = 64
lr = 0.05
per_class = 20
test_per_class = 10
device = "cpu"
# How the run is carried out (run_experiment's arguments, not part of the run's identity).
out = "runs/notebook-demo"
cache_dir = None
threads = None
progress = True
latency_repeats = 10
deployed_latency = True

# %%
from dataclasses import fields

import torch

from paperprune.lab.experiment import RunConfig, run_experiment

if threads:
    torch.set_num_threads(int(threads))
# every RunConfig field set above (or injected by papermill) goes into the run; the rest keep their defaults
config = RunConfig(**{f.name: globals()[f.name] for f in fields(RunConfig) if f.name in globals()})
print(config)
record = run_experiment(config, out, cache_dir=cache_dir, progress=progress, latency_repeats=latency_repeats,
                        deployed_latency=deployed_latency)

# %% [markdown]
# ## Result

# %%
b, p = record['baseline'], record['pruned']
print(f"{config.dataset} {config.arch} {config.method}: top-1 {b['top1']:.2f} -> "
      f"{p['top1_before_finetune']:.2f} (pruned) -> {p['top1']:.2f} (fine-tuned)")
print(f"MACs {b['macs'] / 1e6:.2f}M -> {p['macs'] / 1e6:.2f}M (-{100 * p['macs_reduction']:.1f}%), "
      f"params {b['params'] / 1e6:.3f}M -> {p['params'] / 1e6:.3f}M (-{100 * p['params_reduction']:.1f}%)")
for name, lat in record['latency'].items():
    print(f"latency {name}: {lat['base_ms']:.2f} ms -> {lat['pruned_ms']:.2f} ms")
    if 'deployed' in lat:
        print(f"latency {name}, {lat['deployed']}: {lat['deployed_base_ms']:.2f} ms -> "
              f"{lat['deployed_pruned_ms']:.2f} ms")

# %%
import matplotlib.pyplot as plt

layers = record['layers']
fig, ax = plt.subplots(figsize=(6, 2.5), dpi=80)
ax.bar(range(len(layers)), [l['width_before'] for l in layers], color='0.85', label='before')
ax.bar(range(len(layers)), [l['width_after'] for l in layers], label='kept')
ax.set_xlabel('prunable layer'); ax.set_ylabel('channels'); ax.legend()
ax.set_title(f'{config.arch} / {config.method}: kept channels per layer')
plt.show()
