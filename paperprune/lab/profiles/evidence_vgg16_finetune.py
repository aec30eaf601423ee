"""The `evidence-vgg16-finetune` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

The evidence profiles, sized by the measured costs in COSTS (`python -m
paperprune.lab.reproduce --profile evidence --dry-run` prints the estimate). Curves, ablation and fine-tuning on both baselines plus two
trainings do not fit one 150-minute run on this project's 2-core CPU: measured, one curves point of ResNet-56
(two bf16 evaluations of the 10,000 test images) costs ~30 s, VGG-16's about twice that, so the whole
design is ~270 minutes. It is split in two profiles of <= 150 minutes each:
- `evidence`: the shipped ResNet-56 (trained by `python -m paperprune train` with this recipe for 15 epochs,
  its record in paperprune/resources/pretrained/; retraining it costs ~70 minutes): curves, the
  ablation, the fine-tuned comparison at -55%;
- `evidence-vgg16`: VGG-16 retrained on all 60,000 images (4 epochs), its curves and ablation
  (at 60% only);
- `evidence-vgg16-finetune`: the fine-tuned comparison at -61% from evidence-vgg16's baseline (trained
  there, if it is not yet, by either profile), which does not fit beside its curves.
"""

PROFILE = {'name': 'evidence-vgg16-finetune',
 'description': "Fashion-MNIST, evidence-vgg16's VGG-16 (trained in runs/evidence-vgg16/baselines/ if it is not "
                'yet): the fine-tuned comparison at -61% FLOPs, all criteria, three seeds, one epoch over 10,000 '
                'class-balanced training images at lr 0.01. Evaluations in bf16 where the CPU runs it.',
 'run_grids': [{'datasets_archs': [['fashion-mnist', 'vgg16']],
                'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
                'seeds': [0, 1, 2],
                'flops_reduction': {'vgg16': 0.61},
                'settings': {'samples_per_class': 10,
                             'baseline': 'vgg16',
                             'finetune_epochs': 1,
                             'per_class': 1000,
                             'batch_size': 128,
                             'finetune_lr': 0.01}}],
 'baselines': [{'dataset': 'fashion-mnist',
                'arch': 'vgg16',
                'epochs': 4,
                'lr': 0.1,
                'weight_decay': 0.0001,
                'batch_size': 128,
                'seed': 0,
                'precision': 'auto'}],
 'latency_repeats': 0,
 'deployed_latency': False,
 'baselines_from': 'evidence-vgg16'}
