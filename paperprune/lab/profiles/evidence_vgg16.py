"""The `evidence-vgg16` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

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

PROFILE = {'name': 'evidence-vgg16',
 'description': 'Fashion-MNIST, VGG-16 retrained on all 60,000 training images in bf16 (4 epochs, lr 0.1, weight '
                "decay 1e-4 as the shipped ResNet-56; the final epoch's top-1 on all 10,000 test images); from it: "
                'pruning curves of all seven criteria, 3 calibration seeds (10 images per class), 30/45/60/75% '
                'FLOPs, top-1 on all 10,000 test images raw and after adaptive BN; the ablation as curves variants '
                "at 60% (B >= 0; the taxonomy tree; APIB's response added). Its fine-tuned runs are "
                'evidence-vgg16-finetune.',
 'curves': [{'dataset': 'fashion-mnist',
             'arch': 'vgg16',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'baseline': 'vgg16',
             'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
             'targets': [0.3, 0.45, 0.6, 0.75]},
            {'dataset': 'fashion-mnist',
             'arch': 'vgg16',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'baseline': 'vgg16',
             'methods': ['classwise', 'sglp', 'stlp'],
             'targets': [0.6],
             'criterion_options': {'nonnegative': True}},
            {'dataset': 'fashion-mnist',
             'arch': 'vgg16',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'baseline': 'vgg16',
             'methods': ['stlp'],
             'targets': [0.6],
             'criterion_options': {'structure': 'taxonomy'}},
            {'dataset': 'fashion-mnist',
             'arch': 'vgg16',
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': None,
             'precision': 'auto',
             'baseline': 'vgg16',
             'methods': ['classwise', 'sglp', 'stlp'],
             'targets': [0.6],
             'criterion_options': {'response': 'class+output'}}],
 'baselines': [{'dataset': 'fashion-mnist',
                'arch': 'vgg16',
                'epochs': 4,
                'lr': 0.1,
                'weight_decay': 0.0001,
                'batch_size': 128,
                'seed': 0,
                'precision': 'auto'}],
 'latency_repeats': 0,
 'deployed_latency': False}
