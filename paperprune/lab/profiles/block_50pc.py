"""The `block-50pc` profile: plain data that `paperprune.lab.reproduce` reads.

The `block` profile's lasso curves with block statistics (METHOD.md section 2b) at 50 images per class instead
of 10: more calibration data for about the cost of exact statistics at 10 (block costs N B M per
channel against N squared). Read beside `block`'s exact curves: whether each criterion's curve moves.
"""
from .block import BLOCK, JOB

PROFILE = {'name': 'block-50pc',
 'description': 'Fashion-MNIST, the shipped ResNet-56: the four lasso criteria at 45/60% fewer FLOPs with block '
                'statistics (B = 20, M = 3) on 50 images per class, 10 calibration seeds, top-1 on 3,000 '
                'class-stratified test images raw and after adaptive BN; no fine-tuning.',
 'curves': [dict(JOB, samples_per_class=50, criterion_options=dict(BLOCK))],
 'compared_with': 'block',
 'latency_repeats': 0,
 'deployed_latency': False}
