"""The `verdict-finetune` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

The fine-tuned comparison of the verdict (METHOD.md section 6): the shipped ResNet-56 pruned by 55% of its
FLOPs (APIB's ResNet-56 operating point), then fine-tuned over all 60,000 training images for 3 epochs with
the lineage's recipe (SGD momentum 0.9, weight decay 1e-4, cosine from lr 0.01), top-1 on all 10,000 test
images after every epoch (`pruned.finetune_top1`), 5 seeds each. The class-wise criteria (plain lasso,
sGLP-IB, sTLP-IB) face the class-agnostic candidates that the curves put ahead somewhere: APIB, HRank under
both allocations, L1 and random under the uniform one. The report compares each class-wise criterion with
whichever candidate scores best, so no candidate is picked before the data. The short fine-tune of the
`evidence` profile (one epoch over 10,000 images, 79 steps) is the shortest point of the same comparison.
"""

PROFILE = {'name': 'verdict-finetune',
 'description': 'Fashion-MNIST, the shipped ResNet-56 pruned by 55% of its FLOPs: the plain class-wise lasso, '
                'sGLP-IB and sTLP-IB against APIB, HRank (global and uniform allocation), L1 and random (uniform), '
                '5 calibration seeds each, fine-tuned over all 60,000 training images for 3 epochs (cosine from lr '
                '0.01, weight decay 1e-4), top-1 on all 10,000 test images after every epoch.',
 'run_grids': [{'datasets_archs': [['fashion-mnist', 'resnet56']],
                'methods': ['classwise', 'sglp', 'stlp', 'apib', 'hrank', 'hrank:uniform', 'l1:uniform',
                            'random:uniform'],
                'seeds': [0, 1, 2, 3, 4],
                'flops_reduction': {'resnet56': 0.55},
                'settings': {'samples_per_class': 10,
                             'pretrained': 'fashion-mnist',
                             'finetune_epochs': 3,
                             'per_class': None,
                             'batch_size': 128,
                             'finetune_lr': 0.01}}],
 'latency_repeats': 0,
 'deployed_latency': False}
