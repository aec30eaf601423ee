"""Recheck of the evidence curves' lasso points with the solver's new iteration budget.

The evidence records (figures/evidence, figures/evidence-vgg16) were computed when the lasso criteria
stopped each solve at 3,000 iterations, and curves did not record a solve stopped there. This reruns
the named criteria of one record's curves (same baseline, calibration seeds, targets, adaptive-BN and
test images) at the current default (criteria.SOLVER_MAX_ITER = 20,000), which records
`unconverged_layers`, and prints, per point, whether the kept channels are the same and both top-1s.

    python figures/evidence-vgg16/records/recheck-max-iter.py RECORD OUT METHOD [METHOD ...]
"""
import json
import sys

from paperprune import curves

record, out, methods = sys.argv[1], sys.argv[2], sys.argv[3:]
rec = json.load(open(record))
c = rec["config"]
new = curves.run(c["dataset"], c["arch"], out, pretrained=c["pretrained"], weights=c["weights"], methods=methods,
                 targets=c["targets"], seeds=c["seeds"], samples_per_class=c["samples_per_class"],
                 bn_images=c["bn_images"], test_per_class=None if c["test_images"] == 10000 else c["test_images"] // 10,
                 precision=c["precision"], criterion_options=c["criterion_options"], progress=False)
old = {(p["method"], p["seed"], p["target"]): p for p in rec["points"]}
print(f"record {record} (commit {rec['environment']['git_commit'][:7]}) against commit "
      f"{new['environment']['git_commit'][:7]}")
print("method seed target | same kept | top1_bn old -> new | unconverged layers now")
for p in new["points"]:
    q = old[(p["method"], p["seed"], p["target"])]
    print(f"{p['method']} {p['seed']} {p['target']} | {q['kept'] == p['kept']} | "
          f"{q['top1_bn']:.2f} -> {p['top1_bn']:.2f} | {p.get('unconverged_layers')}")
