# %% [markdown]
# # 05 - Does it pay? The measured verdict, over seeds
#
# Notebooks 00-04 each show one calibration draw on one model or one layer. This notebook shows
# what the project's recorded experiments say, over seeds: does pruning with class-wise
# information (the class-wise lasso, sGLP-IB, sTLP-IB) keep more accuracy than class-agnostic
# criteria (L1 norm, HRank, APIB, random channels) at the same FLOPs reduction?
#
# It prunes and trains nothing. It reads the evidence records committed under
# `figures/evidence*/records/` (whatever is there when it runs, so it stays right when new
# evidence lands) and runs in well under a minute:
#
# - **pruning curves** (`curves.json`): every criterion at several FLOPs targets and calibration
#   seeds, top-1 **right after pruning** and **after adaptive BN** (BatchNorm statistics
#   re-estimated on a few training images, no training);
# - **fine-tuned runs** (`run.json`): every criterion at one target, per seed, top-1 before and
#   after each fine-tuning length the records hold;
# - **ablation curves**: the class-wise criteria with $B \ge 0$, with the taxonomy tree instead
#   of the embedding tree, and with APIB's response added to the class responses.
#
# The seed (the calibration draw; for fine-tuned runs also the training order) is the unit of
# replication (`METHOD.md` section 6): every interval here is a 95% t-interval over seeds
# (`paperprune.lab.seeds`), and a criterion is compared with another through its per-seed paired
# differences. With three seeds the t quantile is 4.3 (printed below), so intervals are wide;
# that is the honest width of three seeds.
#
# **What comes from the paper.** Only its abstract: VGG-16 on CIFAR-10 with 61% fewer FLOPs at
# 94.10% top-1 (the unpruned model: 93.96%), and a ResNet on ImageNet at 76.12% (76.15%). They
# are shown beside this project's numbers and labelled as what they are: another dataset, other
# models and a training protocol the abstract does not state. They are not comparable with the
# Fashion-MNIST runs here, and nothing below checks them.

# %%
# %matplotlib inline
import warnings
from pathlib import Path

with warnings.catch_warnings():  # tqdm's notice that ipywidgets is absent (progress bars are off here)
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats
from IPython.display import display

from paperprune.criteria import AGNOSTIC, CLASSWISE
from paperprune.lab.reporting import load_curves, load_references, load_runs
from paperprune.lab.reporting.records import METHOD_LABELS
from paperprune.lab.seeds import paired_difference, summarize

plt.rcParams.update({"figure.dpi": 90, "font.size": 9})
pd.set_option("display.width", 160, "display.max_columns", 20, "display.max_rows", 200)
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "figures").is_dir() and (p / "paperprune").is_dir())
ORDER = list(AGNOSTIC) + list(CLASSWISE)
LABEL = {m: METHOD_LABELS[m] for m in ORDER}

# %% [markdown]
# ## The records
#
# Every `curves.json` and every run folder under `figures/evidence*/records/`, read through the
# package's record schema (`paperprune.lab.record`), which refuses a malformed record by name.

# %%
curve_files = sorted(ROOT.glob("figures/evidence*/records/curves/*/curves.json"))
curves = [load_curves(path) for path in curve_files]
runs = [run for folder in sorted(ROOT.glob("figures/evidence*/records")) for run in load_runs(folder)
        if run["status"] == "complete"]
assert curves, "no curves record under figures/evidence*/records/curves"


def variant(record):
    """ "main", or the criterion options a curves record changes (e.g. "nonnegative = True")."""
    options = record["config"].get("criterion_options") or {}
    return ", ".join(f"{k} = {v}" for k, v in sorted(options.items())) or "main"


#: a run's criterion options at their defaults; a run that changes one is an ablation variant
RUN_DEFAULTS = {"nonnegative": False, "response": "class", "structure": "embedding", "allocation": "global"}


def run_variant(config):
    changed = {k: config[k] for k, v in RUN_DEFAULTS.items() if config.get(k, v) not in (v, None)}
    return ", ".join(f"{k} = {v}" for k, v in sorted(changed.items())) or "main"


for path, record in zip(curve_files, curves):
    c = record["config"]
    ok = [p for p in record["points"] if "error" not in p]
    print(f"{path.relative_to(ROOT)}: {c['arch']} on {c['dataset']}, {variant(record)}; "
          f"{len(ok)} points ({len(record['points']) - len(ok)} unreached), seeds {c['seeds']}, "
          f"targets {c['targets']}, {c['test_images']} test images")
for (arch, epochs), group in pd.DataFrame([(r["config"]["arch"], r["config"]["finetune_epochs"]) for r in runs],
                                          columns=["arch", "epochs"]).groupby(["arch", "epochs"]):
    print(f"fine-tuned runs: {arch}, {epochs} epoch(s): {len(group)} runs")
print(f"the 95% t quantile with 3 seeds (2 degrees of freedom): {stats.t.ppf(0.975, 2):.2f}")

# %% [markdown]
# One table holds every measured top-1, one row per criterion, seed and stage: the curves give
# the stages *right after pruning* and *after adaptive BN*; the fine-tuned runs give *before
# fine-tuning* (their own pruning, at their own target) and *fine-tuned, E epoch(s)* for each
# length E they hold. Each point's x is the FLOPs reduction it reached (MACs of the pruned
# model against the unpruned one), not its target.

# %%
rows = []
for record in curves:
    c = record["config"]
    for p in record["points"]:
        if "error" in p:
            continue
        for stage, key in (("right after pruning", "top1"), ("after adaptive BN", "top1_bn")):
            rows.append({"arch": c["arch"], "dataset": c["dataset"], "variant": variant(record), "stage": stage,
                         "method": p["method"], "seed": p["seed"], "target": round(float(p["target"]), 4),
                         "flops": 100 * p["macs_reduction"], "top1": p[key]})
for run in runs:
    c, pruned = run["config"], run["pruned"]
    for stage, top1 in (("before fine-tuning", pruned["top1_before_finetune"]),
                        (f"fine-tuned, {c['finetune_epochs']} epoch(s)", pruned["top1"])):
        rows.append({"arch": c["arch"], "dataset": c["dataset"], "variant": run_variant(c), "stage": stage,
                     "method": c["method"], "seed": c["seed"], "target": round(float(c["flops_reduction"]), 4),
                     "flops": 100 * pruned["macs_reduction"], "top1": top1, "baseline": run["baseline"]["top1"]})
df = pd.DataFrame(rows)
twice = df[df.duplicated(["arch", "dataset", "variant", "stage", "method", "seed", "target"], keep=False)]
assert twice.empty, f"records that measure the same point twice:\n{twice}"
main = df[df.variant == "main"]
STAGES = ["right after pruning", "after adaptive BN", "before fine-tuning"] + sorted(
    s for s in df.stage.unique() if s.startswith("fine-tuned"))


def in_order(frame):
    """Rows sorted by architecture, stage (in the order above), target and criterion."""
    key = {"stage": STAGES.index, "method": ORDER.index}
    return frame.sort_values(["arch", "stage", "target", "method"], kind="stable",
                             key=lambda c: c.map(key[c.name]) if c.name in key else c)


print(f"{len(df)} measurements: {df.method.nunique()} criteria, {df.arch.nunique()} architectures, "
      f"stages: {sorted(df.stage.unique())}")

# %% [markdown]
# ## Accuracy against FLOPs, every criterion
#
# Mean top-1 over seeds (line), each seed (dots) and the 95% t-interval of the mean over seeds
# (band), right after pruning and after adaptive BN; the dotted line is chance (10 classes). A
# class-wise criterion (solid) pays if its line lies above the best class-agnostic one (dashed)
# at the same FLOPs.

# %%
def t_interval(values):
    s = summarize(list(values))
    return (s.mean, s.mean) if s.low is None else (s.low, s.high)


palette = dict(zip(ORDER, sns.color_palette("tab10", len(ORDER))))
dashes = {LABEL[m]: ((4, 2) if m in AGNOSTIC else "") for m in ORDER}
curve_stages = ["right after pruning", "after adaptive BN"]
archs = sorted(main.arch.unique())
fig, axes = plt.subplots(len(archs), 2, figsize=(10, 3.6 * len(archs)), squeeze=False, sharey="row")
for i, arch in enumerate(archs):
    for j, stage in enumerate(curve_stages):
        ax = axes[i, j]
        at = main[(main.arch == arch) & (main.stage == stage)].copy()
        if at.empty:
            ax.set_axis_off()
            continue
        at["x"] = at.groupby(["method", "target"]).flops.transform("mean")   # seeds share one x per target
        at["criterion"] = at.method.map(LABEL)
        order = [LABEL[m] for m in ORDER if m in set(at.method)]
        sns.lineplot(data=at, x="x", y="top1", hue="criterion", hue_order=order, style="criterion",
                     dashes=dashes, errorbar=t_interval, err_kws={"alpha": 0.08},
                     palette={LABEL[m]: palette[m] for m in ORDER}, marker="o", markersize=4, lw=1.2, ax=ax,
                     legend=(i == 0 and j == 1))
        sns.scatterplot(data=at, x="flops", y="top1", hue="criterion", hue_order=order, s=9, alpha=0.5,
                        palette={LABEL[m]: palette[m] for m in ORDER}, legend=False, ax=ax)
        ax.axhline(10, color="gray", ls=":", lw=0.8)                          # chance: 10 classes
        ax.set_title(f"{arch} on {at.dataset.iloc[0]}: {stage}")
        ax.set_xlabel("FLOPs reduction reached (%)")
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), title="criterion (dashed: class-agnostic)",
                  title_fontsize=7)
fig.suptitle("Pruning curves, no fine-tuning: mean over seeds, dots: seeds, band: 95% t-interval over seeds")
fig.tight_layout()

# %% [markdown]
# The same numbers as a table: n seeds, mean, sample std and the 95% t-interval, per
# architecture, stage, target and criterion.

# %%
def summary_rows(frame, keys):
    out = []
    for key, group in frame.groupby(keys, sort=False):
        s = summarize(group.top1.tolist(), seeds=group.seed.tolist())
        out.append({**dict(zip(keys, key)), "n": s.n, "FLOPs (%)": round(group.flops.mean(), 1),
                    "top-1 mean": round(s.mean, 2), "std": None if s.std is None else round(s.std, 2),
                    "95% t-interval": s.interval_text()})
    return pd.DataFrame(out)


table = summary_rows(in_order(main), ["arch", "stage", "target", "method"])
table["method"] = table.method.map(LABEL)
table

# %% [markdown]
# ## After fine-tuning
#
# The fine-tuned runs: every criterion pruned to one target and trained for each length the
# records hold, per seed; top-1 before fine-tuning and after it, with the top-1 of the unpruned
# model the runs start from (the dotted line). Error bars: 95% t-interval over seeds; dots:
# seeds.

# %%
tuned = main[main.stage.str.startswith("fine-tuned") | (main.stage == "before fine-tuning")]
if tuned.empty:
    print("no fine-tuned run records yet")
else:
    tuned_archs = sorted(tuned.arch.unique())
    fig, axes = plt.subplots(1, len(tuned_archs), figsize=(5.6 * len(tuned_archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], tuned_archs):
        at = tuned[tuned.arch == arch].copy()
        at["criterion"] = at.method.map(LABEL)
        order = [LABEL[m] for m in ORDER if m in set(at.method)]
        stages = ["before fine-tuning"] + sorted(s for s in at.stage.unique() if s != "before fine-tuning")
        sns.pointplot(data=at, x="criterion", y="top1", hue="stage", hue_order=stages, order=order,
                      errorbar=t_interval, dodge=0.4, linestyle="none", markers="o", markersize=4, ax=ax)
        sns.stripplot(data=at, x="criterion", y="top1", hue="stage", hue_order=stages, order=order, dodge=0.4,
                      size=3, alpha=0.5, legend=False, ax=ax)
        ax.axhline(at.baseline.mean(), color="black", ls=":", lw=1, label="unpruned")
        ax.set_ylim(0, 100)
        ax.set_title(f"{arch} on {at.dataset.iloc[0]}, FLOPs reduction {at.flops.mean():.0f}% (mean)")
        ax.set_xlabel("")
        ax.set_ylabel("top-1 (%)")
        ax.tick_params(axis="x", rotation=35)
        for label in ax.get_xticklabels():
            label.set_ha("right")
        ax.legend(fontsize=7, title=None)
    fig.tight_layout()

# %%
if not tuned.empty:
    tuned_table = summary_rows(in_order(tuned), ["arch", "stage", "target", "method"])
    tuned_table["method"] = tuned_table.method.map(LABEL)
    for arch, group in tuned.groupby("arch"):
        print(f"{arch}: the unpruned model's top-1 as the runs record it: {sorted(set(group.baseline))}")
    display(tuned_table)

# %% [markdown]
# ## Class-wise against the best class-agnostic criterion, paired over seeds
#
# At each target and stage, each class-wise criterion against the class-agnostic criterion with
# the highest mean top-1 there (the strongest competitor the records show): the mean of the
# per-seed differences (class-wise minus class-agnostic; the same seed means the same
# calibration images for both) and its 95% t-interval with n - 1 degrees of freedom
# (`paperprune.lab.seeds.paired_difference`). **wins**: the interval lies above 0; **loses**: below
# 0; **unresolved**: it contains 0; **equal on every seed**: the two top-1 agree on every seed
# (typically both at chance, 10%, where pruning without BN re-estimation breaks the network).
# Choosing the best class-agnostic criterion on the same seeds favours that side a little; a
# class-wise criterion that wins here beats every class-agnostic one at that point.

# %%
def verdict(d):
    if d.low is None:
        return "one seed"
    if d.std == 0 and d.mean == 0:
        return "equal on every seed"
    return "wins" if d.low > 0 else "loses" if d.high < 0 else "unresolved"


def paired_rows(frame):
    out = []
    for (arch, stage, target), at in frame.groupby(["arch", "stage", "target"], sort=True):
        by = {m: dict(zip(g.seed, g.top1)) for m, g in at.groupby("method")}
        agnostic = [m for m in AGNOSTIC if m in by]
        if not agnostic:
            continue
        best = max(agnostic, key=lambda m: np.mean(list(by[m].values())))
        for method in (m for m in CLASSWISE if m in by):
            seeds = sorted(set(by[method]) & set(by[best]))
            d = paired_difference({s: by[method][s] for s in seeds}, {s: by[best][s] for s in seeds})
            out.append({"arch": arch, "stage": stage, "target": target, "class-wise": LABEL[method],
                        "best class-agnostic": LABEL[best], "n": d.n, "difference": round(d.mean, 2),
                        "95% t-interval": d.interval_text(signed=True), "verdict": verdict(d)})
    return pd.DataFrame(out)


paired = paired_rows(main)
paired = paired.sort_values(["arch", "stage", "target"], key=lambda c: c.map(STAGES.index) if c.name == "stage" else c,
                            kind="stable").reset_index(drop=True)
paired

# %% [markdown]
# The verdict, counted from the table above (so it follows the records):

# %%
for (arch, stage), group in paired.groupby(["arch", "stage"], sort=False):
    counts = group.verdict.value_counts()
    print(f"{arch}, {stage}: {len(group)} comparisons; class-wise wins {counts.get('wins', 0)}, "
          f"loses {counts.get('loses', 0)}, unresolved {counts.get('unresolved', 0)}, "
          f"equal on every seed {counts.get('equal on every seed', 0)}")
for title, part in (("does NOT beat", paired[paired.verdict != "wins"]), ("beats", paired[paired.verdict == "wins"])):
    print(f"\nWhere a class-wise criterion {title} the best class-agnostic one ({len(part)} of {len(paired)}):")
    for (arch, stage), group in part.groupby(["arch", "stage"], sort=False):
        print(f"  {arch}, {stage}:")
        for _, r in group.iterrows():
            print(f"    {r['class-wise']:<32} at {100 * r.target:g}% vs {r['best class-agnostic']:<18} "
                  f"{r.difference:+7.2f} {r['95% t-interval']:<18} {r.verdict}")

# %% [markdown]
# ## Beside the paper's headline numbers (another dataset and protocol)
#
# The abstract's numbers (`paperprune/resources/reference_numbers.csv`, `METHOD.md` section 1)
# and this project's fine-tuned runs, as the change in top-1 from each one's own unpruned
# model. They differ in dataset (CIFAR-10 and ImageNet there, Fashion-MNIST here), in model
# (the abstract's ResNet is taken to be ResNet-50) and in training protocol (the abstract's
# fine-tuning length is not stated; here the lengths printed above). The abstract gives no
# spread and no seeds; it does not say whether sGLP-IB or sTLP-IB produced its numbers, and it
# gives no FLOPs reduction for ImageNet (that row has no x and is listed only in the table).

# %%
refs = pd.DataFrame(load_references())
paper = refs[refs.method == "paper (abstract)"].copy()
unpruned = refs[refs.method == "baseline"].set_index(["dataset", "arch"]).top1
paper["unpruned top-1"] = [unpruned.get((d, a)) for d, a in zip(paper.dataset, paper.arch)]
paper["change"] = paper.top1 - paper["unpruned top-1"]
headline = [{"source": "paper abstract (another dataset and protocol)", "dataset": r.dataset,
             "arch": r.arch, "criterion": "sGLP-IB or sTLP-IB (not stated)",
             "FLOPs reduction (%)": None if pd.isna(r.flops_reduction) else round(100 * r.flops_reduction),
             "top-1": r.top1, "unpruned top-1": r["unpruned top-1"], "change": round(r.change, 2),
             "95% t-interval of change": "no spread given", "low": None, "high": None} for _, r in paper.iterrows()]
fine = main[main.stage.str.startswith("fine-tuned")]
for (arch, stage, method), g in fine.groupby(["arch", "stage", "method"]):
    d = paired_difference(dict(zip(g.seed, g.top1)), dict(zip(g.seed, g.baseline)))
    headline.append({"source": f"this project, {stage}", "dataset": g.dataset.iloc[0], "arch": arch,
                     "criterion": LABEL[method], "FLOPs reduction (%)": round(g.flops.mean(), 1),
                     "top-1": round(g.top1.mean(), 2), "unpruned top-1": round(g.baseline.mean(), 2),
                     "change": round(d.mean, 2), "95% t-interval of change": d.interval_text(signed=True),
                     "low": d.low, "high": d.high})
headline = pd.DataFrame(headline)
headline.drop(columns=["low", "high"])

# %%
fig, ax = plt.subplots(figsize=(8.4, 3.8))
ours = headline[headline.source.str.startswith("this project")]
for (arch, stage), g in ours.groupby(["arch", "source"]):
    for _, r in g.iterrows():
        method = next(m for m in ORDER if LABEL[m] == r.criterion)
        yerr = None if r.low is None or pd.isna(r.low) else [[r.change - r.low], [r.high - r.change]]
        ax.errorbar(r["FLOPs reduction (%)"], r.change, yerr=yerr, fmt="o" if arch == "resnet56" else "s",
                    color=palette[method], ms=4, capsize=2, lw=1)
for _, r in paper[paper.flops_reduction.notna()].iterrows():
    ax.plot(100 * r.flops_reduction, r.change, "*", color="black", ms=12)
    ax.annotate(f"paper abstract: {r.arch}, {r.dataset}\n(another dataset and protocol)",
                (100 * r.flops_reduction, r.change), xytext=(-10, -4), textcoords="offset points", fontsize=7,
                ha="right", va="top")
ax.axhline(0, color="gray", lw=0.6)
handles = [plt.Line2D([], [], color=palette[m], marker="o", ls="", label=LABEL[m]) for m in ORDER
           if LABEL[m] in set(ours.criterion)]
handles += [plt.Line2D([], [], color="gray", marker=mk, ls="", label=a) for a, mk in (("resnet56", "o"), ("vgg16", "s"))
            if a in set(ours.arch)]
ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), title="this project (Fashion-MNIST)",
          title_fontsize=7)
ax.set_xlabel("FLOPs reduction (%)")
ax.set_ylabel("top-1 change from the unpruned model (points)")
ax.set_title("Fine-tuned runs (95% t-intervals over seeds) and the abstract's VGG-16 point")
fig.tight_layout()

# %% [markdown]
# ## Ablations
#
# Each ablation curves record reruns the class-wise criteria with one option changed, on the
# same baseline, targets, seeds and calibration images as the main curves: $B \ge 0$
# (`nonnegative = True`, HSIC Lasso's constraint), the taxonomy tree instead of the embedding
# tree (`structure = taxonomy`) and APIB's response added to the class responses
# (`response = class+output`). Below: the per-seed paired difference variant minus main, with
# its 95% t-interval over seeds.

# %%
keys = ["arch", "stage", "method", "target", "seed"]
base = main[main.stage.isin(curve_stages)].set_index(keys).top1
ablation_rows = []
for name, g in df[(df.variant != "main") & df.stage.isin(curve_stages)].groupby(["variant", "arch", "stage", "method",
                                                                                  "target"]):
    variant_top1 = dict(zip(g.seed, g.top1))
    main_top1 = {s: base.get((*name[1:], s)) for s in variant_top1}
    if any(v is None for v in main_top1.values()):
        continue
    d = paired_difference(variant_top1, main_top1)
    ablation_rows.append({"variant": name[0], "arch": name[1], "stage": name[2], "criterion": LABEL[name[3]],
                          "target": name[4], "n": d.n, "main": round(np.mean(list(main_top1.values())), 2),
                          "variant top-1": round(d.mean + np.mean(list(main_top1.values())), 2),
                          "difference": round(d.mean, 2), "low": d.low, "high": d.high,
                          "95% t-interval": d.interval_text(signed=True), "verdict": verdict(d)})
ablations = pd.DataFrame(ablation_rows)
ablations.drop(columns=["low", "high"])

# %%
if not ablations.empty:
    names = sorted(ablations.variant.unique())
    variant_colour = dict(zip(names, sns.color_palette("Set1", len(names))))
    ab_archs = sorted(ablations.arch.unique())
    n_labels = [ablations[ablations.arch == a].groupby(["criterion", "target"]).ngroups for a in ab_archs]
    fig, axes = plt.subplots(len(ab_archs), 2, figsize=(10, sum(0.5 * n + 1.4 for n in n_labels)), squeeze=False,
                             gridspec_kw={"height_ratios": [0.5 * n + 1.4 for n in n_labels]})
    for i, arch in enumerate(ab_archs):
        for j, stage in enumerate(curve_stages):
            ax, g = axes[i, j], ablations[(ablations.arch == arch) & (ablations.stage == stage)]
            short = [f"{r.criterion.split(' (')[0]} at {100 * r.target:g}%" for _, r in g.iterrows()]
            labels = list(dict.fromkeys(short))
            step = 0.8 / max(1, len(variant_colour))
            for k, (name, colour) in enumerate(variant_colour.items()):
                for label, (_, r) in zip(short, g.iterrows()):
                    if r.variant != name:
                        continue
                    y = labels.index(label) + (k - (len(names) - 1) / 2) * step
                    xerr = None if pd.isna(r.low) else [[r.difference - r.low], [r.high - r.difference]]
                    ax.errorbar(r.difference, y, xerr=xerr, fmt="o", color=colour, ms=4, capsize=2, lw=1)
            ax.axvline(0, color="black", lw=0.6)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("top-1 difference, variant minus main (points)")
            ax.set_title(f"{arch}: {stage}")
    markers = [plt.Line2D([], [], color=c, marker="o", ls="", label=v) for v, c in variant_colour.items()]
    axes[0, 1].legend(handles=markers, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), title="variant",
                      title_fontsize=7)
    fig.suptitle("Ablations: per-seed paired difference from the main curves, 95% t-interval over seeds")
    fig.tight_layout(rect=(0, 0, 1, 0.97))

# %%
for (name, stage), g in ablations.groupby(["variant", "stage"], sort=False):
    counts = g.verdict.value_counts()
    print(f"{name}, {stage}: {len(g)} comparisons; better than main {counts.get('wins', 0)}, "
          f"worse {counts.get('loses', 0)}, unresolved {counts.get('unresolved', 0)}, "
          f"equal on every seed {counts.get('equal on every seed', 0)}")

# %% [markdown]
# ## Reading the verdict
#
# The counts above are computed from the records, so they say what the evidence under
# `figures/` says when this notebook runs; the project README's headline and
# `figures/evidence*/README.md` give the runs' provenance (commands, commits, machines).
# Three seeds give wide intervals: "unresolved" means the records cannot tell the two
# criteria apart, not that they are equal. The single draws in notebooks 00-04 (one
# calibration sample, one layer or one model) explain what each criterion selects; they are not
# evidence that one criterion prunes better than another.
