"""One module per reproduction profile, each a `PROFILE` dict of plain data: its runs (as grids of
(dataset, arch) x method x seed with shared settings), pruning-curve jobs and baselines, read by
`paperprune.lab.reproduce.profiles`."""

#: the profiles' modules, in the order `--profile` lists them
MODULES = ("quick", "evidence", "evidence_vgg16", "evidence_vgg16_finetune", "verdict", "verdict_vgg16", "fmnist",
           "paper")
