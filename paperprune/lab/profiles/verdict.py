"""The `verdict` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

The verdict profiles: the evidence's curves again by the protocol METHOD.md sections 2c and 6 ask for: ten
calibration seeds (the unit of replication), the class-agnostic criteria under both allocations (their papers
set per-layer ratios; `uniform` is that protocol), 3,000 class-stratified test images, and a VGG-16 trained to
convergence (the lineage's CIFAR VGG weight decay, 5e-4). The fine-tuned comparison follows from them: it
needs the best class-agnostic variant these curves measure.
"""

PROFILE = {'name': 'verdict',
 'description': 'Fashion-MNIST, the shipped ResNet-56: pruning curves of the seven criteria and of l1, hrank and '
                'random under the uniform allocation, 10 calibration seeds (10 images per class), 30/45/60/75% '
                'FLOPs, top-1 on 3,000 class-stratified test images raw and after adaptive BN (256 training '
                'images); no fine-tuning.',
 'curves': [{'dataset': 'fashion-mnist',
             'arch': 'resnet56',
             'pretrained': 'fashion-mnist',
             'methods': ['random',
                         'l1',
                         'hrank',
                         'apib',
                         'classwise',
                         'sglp',
                         'stlp',
                         'l1:uniform',
                         'hrank:uniform',
                         'random:uniform'],
             'targets': [0.3, 0.45, 0.6, 0.75],
             'seeds': [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
             'samples_per_class': 10,
             'bn_images': 256,
             'test_per_class': 300,
             'precision': 'auto'}],
 'latency_repeats': 0,
 'deployed_latency': False}
