"""The `paper` profile: plain data that `paperprune.lab.reproduce` reads (schedules are ours unless cited).

FLOPs reductions of the paper grid: the paper's abstract for VGG-16 (61%); otherwise APIB's
README targets (ResNet-56 57e6, ResNet-110 96e6, GoogLeNet 568e6, ResNet-50 1.55e9 of the
published baselines) and HRank's DenseNet-40 (167.41M of 282.00M). See reference_numbers.csv.
"""

PROFILE = {'name': 'paper',
 'description': 'The grid of METHOD.md section 3: CIFAR-10 (five models), CIFAR-100 (VGG-16, ResNet-56), ImageNet '
                "(ResNet-50); APIB's recipe (200 epochs pretraining on CIFAR, 150 fine-tuning; ImageNet from a "
                'pretrained ResNet-50, 90 fine-tuning). Needs the data and GPUs.',
 'run_grids': [{'datasets_archs': [['cifar10', 'vgg16'],
                                   ['cifar10', 'resnet56'],
                                   ['cifar10', 'resnet110'],
                                   ['cifar10', 'googlenet'],
                                   ['cifar10', 'densenet40'],
                                   ['cifar100', 'vgg16'],
                                   ['cifar100', 'resnet56']],
                'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
                'seeds': [0],
                'flops_reduction': {'vgg16': 0.61,
                                    'resnet56': 0.55,
                                    'resnet110': 0.62,
                                    'googlenet': 0.63,
                                    'densenet40': 0.41},
                'settings': {'pretrain_epochs': 200,
                             'finetune_epochs': 150,
                             'samples_per_class': 20,
                             'batch_size': 128,
                             'lr': 0.1,
                             'finetune_lr': 0.01}},
               {'datasets_archs': [['imagenet', 'resnet50']],
                'methods': ['random', 'l1', 'hrank', 'apib', 'classwise', 'sglp', 'stlp'],
                'seeds': [0],
                'flops_reduction': {'resnet50': 0.62},
                'settings': {'pretrain_epochs': 0,
                             'finetune_epochs': 90,
                             'samples_per_class': 5,
                             'batch_size': 128,
                             'lr': 0.01,
                             'finetune_lr': 0.01}}]}
