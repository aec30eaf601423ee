"""The `block` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

Block against exact HSIC statistics (METHOD.md section 2b) where it shows: the kept channels and top-1 of each
lasso criterion on the shipped ResNet-56 at 45% and 60% fewer FLOPs, ten calibration seeds, 3,000
class-stratified test images, raw and after adaptive BN. The main curves use exact statistics at 10 images
per class; the variant uses block statistics (B = 20, M = 3) on the same samples, so its ablation table pairs
them seed by seed (top-1 difference and the Jaccard of the kept channels). The profiles `block-50pc` and
`block-100pc` run block statistics at 50 and 100 images per class (about the cost of exact statistics at 10
and 20): whether more calibration data at the same cost moves each criterion's curve.
`benchmarks/bench_block_agreement.py` compares Q and R themselves.
"""

LASSO = ['apib', 'classwise', 'sglp', 'stlp']
JOB = {'dataset': 'fashion-mnist', 'arch': 'resnet56', 'pretrained': 'fashion-mnist', 'methods': LASSO,
        'targets': [0.45, 0.6], 'seeds': [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'samples_per_class': 10, 'bn_images': 256,
        'test_per_class': 300, 'precision': 'auto'}
BLOCK = {'statistics': 'block', 'block_size': 20, 'permutations': 3}

PROFILE = {'name': 'block',
 'description': 'Fashion-MNIST, the shipped ResNet-56: the four lasso criteria at 45/60% fewer FLOPs with exact '
                'statistics and with block statistics (B = 20, M = 3) on the same 10 images per class, 10 '
                'calibration seeds, top-1 on 3,000 class-stratified test images raw and after adaptive BN; no '
                'fine-tuning.',
 'curves': [dict(JOB), dict(JOB, criterion_options=dict(BLOCK))],
 'latency_repeats': 0,
 'deployed_latency': False}
