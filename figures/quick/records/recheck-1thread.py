import json, torch
torch.set_num_threads(1)
from paperprune import curves
rec = json.load(open("figures/quick/records/curves/fashion-mnist-resnet56/curves.json"))
c = rec["config"]
new = curves.run(c["dataset"], c["arch"], "/tmp/recheck-curves", pretrained=c["pretrained"], methods=["sglp", "apib", "l1"],
                 targets=c["targets"], seeds=[0], samples_per_class=c["samples_per_class"], bn_images=c["bn_images"],
                 test_per_class=500, precision="auto", progress=False)
old = {(p["method"], p["seed"], p["target"]): p for p in rec["points"]}
for p in new["points"] if isinstance(new, dict) else new.to_dict()["points"]:
    q = old[(p["method"], p["seed"], p["target"])]
    print(p["method"], p["target"], "top1", q["top1"], p["top1"], "bn", q["top1_bn"], p["top1_bn"], "same kept", q["kept"] == p["kept"])
