"""The `quick` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

The quick profile's sizes are ours, chosen for its 15-minute budget on 2 CPU cores: 63 points of a ResNet-56
evaluated twice (raw, adaptive BN). On 5,000 test images in bf16, unfolded, evaluation took 1,100 s of the
record's 1,392 s (figures/quick at fc7eadd); with BatchNorm folded (EVAL_FOLD_SPEEDUP) and 3,000 test images
the estimate is within 15 min (tests/test_reproduce.py checks it). 3,000 images put a binomial standard error
of about 0.5 points on a top-1 near 90%.
"""

PROFILE = {'name': 'quick',
 'description': "Fashion-MNIST, the shipped ResNet-56 (create_model(..., pretrained='fashion-mnist')): pruning "
                'curves of all seven criteria at 30/55/75% FLOPs, three calibration seeds (10 images per class), '
                'top-1 on 3,000 test images (300 per class) right after pruning, raw and after adaptive BN (256 '
                'training images), evaluated in bf16 where the CPU runs it, BatchNorm folded; no training, no '
                'fine-tuning.',
 'curves': [{'dataset': 'fashion-mnist',
             'arch': 'resnet56',
             'pretrained': 'fashion-mnist',
             'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
             'targets': [0.3, 0.55, 0.75],
             'seeds': [0, 1, 2],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': 300,
             'precision': 'auto'}],
 'latency_repeats': 3}
