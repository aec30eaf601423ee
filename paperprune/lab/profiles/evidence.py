"""The `evidence` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

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

PROFILE = {'name': 'evidence',
 'description': 'Fashion-MNIST, the shipped ResNet-56 (15 epochs on all 60,000 training images, lr 0.1, weight '
                'decay 1e-4, bf16; 93.14% final-epoch top-1): pruning curves of all seven criteria, 3 calibration '
                'seeds (10 images per class), 30/45/60/75% FLOPs, top-1 on all 10,000 test images raw and after '
                "adaptive BN; the ablation as curves variants at 45/60% (B >= 0; the taxonomy tree; APIB's "
                'response added); the fine-tuned comparison at -55% FLOPs, all criteria, three seeds, one epoch '
                'over 10,000 class-balanced training images at lr 0.01. Evaluations in bf16 where the CPU runs it.',
 'run_grids': [{'datasets_archs': [['fashion-mnist', 'resnet56']],
                'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
                'seeds': [0, 1, 2],
                'flops_reduction': {'resnet56': 0.55},
                'settings': {'samples_per_class': 10,
                             'pretrained': 'fashion-mnist',
                             'finetune_epochs': 1,
                             'per_class': 1000,
                             'batch_size': 128,
                             'finetune_lr': 0.01}}],
 'curves': [{'dataset': 'fashion-mnist',
             'arch': 'resnet56',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'pretrained': 'fashion-mnist',
             'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
             'targets': [0.3, 0.45, 0.6, 0.75]},
            {'dataset': 'fashion-mnist',
             'arch': 'resnet56',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'pretrained': 'fashion-mnist',
             'methods': ['classwise', 'sglp', 'stlp'],
             'targets': [0.45, 0.6],
             'criterion_options': {'nonnegative': True}},
            {'dataset': 'fashion-mnist',
             'arch': 'resnet56',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'pretrained': 'fashion-mnist',
             'methods': ['stlp'],
             'targets': [0.45, 0.6],
             'criterion_options': {'structure': 'taxonomy'}},
            {'dataset': 'fashion-mnist',
             'arch': 'resnet56',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'pretrained': 'fashion-mnist',
             'methods': ['classwise', 'sglp', 'stlp'],
             'targets': [0.45, 0.6],
             'criterion_options': {'response': 'class+output'}}],
 'latency_repeats': 0,
 'deployed_latency': False}
