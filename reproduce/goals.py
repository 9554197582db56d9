"""The project's goals and the book's names, as data: what RESULTS.md judges every run against.

`reproduce/results.py` renders the book from the published folders and these tables; a goal
added here shows up in RESULTS.md (met, missed or not measured) at the next `write`.
"""

MODEL_TITLES = {'lenet5': 'LeNet-5', 'resnet20': 'ResNet-20', 'resnet56': 'ResNet-56',
                'vgg16': 'VGG-16', 'alexnet': 'AlexNet'}
DATASET_TITLES = {'mnist': 'MNIST', 'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}
METHOD_TITLES = {'inq': "INQ's rule", 'kmeans': 'k-means on log2 magnitudes', 'optimal': 'optimal'}
# What a reader needs before comparing a dataset's accuracies here with published ones: the copy
# every committed run of that dataset read (`tests/test_data.py` checks the claim on the copy).
DATASET_NOTES = {
    'cifar10': 'Every CIFAR-10 run here read the same offline copy of the data set: a JPEG '
               're-encoding of the original images at IJG quality 75 with 4:2:0 chroma '
               'subsampling (colour at half resolution), for training and test alike. Figures '
               'published on the original images (He et al. 2016: 91.25 % for ResNet-20) are '
               'therefore not directly comparable; the methods below are compared on this copy.',
}

# (text, bits at most, loss vs FP at most, accuracy at least, values per layer at most) of the
# quantization goals per (dataset, model). The LeNet-5 goals name the level counts of sets with a
# zero code (7 at 3 bits, 3 at 2), so zero-free sets (8 and 4 values) do not count for them.
GOALS = {
    ('mnist', 'lenet5'): (
        ('3 bits (7 levels) within 0.15 % of FP', 3, 0.0015, None, 7),
        ('2 bits (3 levels) at >= 98.5 %', 2, None, 0.985, 3),
    ),
    ('cifar10', 'resnet20'): (
        ('3 bits within 0.3 % of FP', 3, 0.003, None, None),
        ('2 bits within 1.0 % of FP', 2, 0.010, None, None),
    ),
}


# (text, accuracy at least) of the full-precision model per (dataset, model), judged on the best
# trained run of the group.
FP_GOALS = {
    # (the JPEG copy here costs some accuracy: 90.0 %, not He et al.'s figure, is the goal)
    ('cifar10', 'resnet20'): ('full precision >= 90.0 % on this copy (He et al. 2016: 91.25 % '
                              'on the original images)', 0.90),
}


# Structured pruning of a trained model against another library, per (dataset, model): the
# published run it starts from, the reference's text, its params and its test accuracy, and the
# accuracy qprune must keep at no more params (the project's pruning issue).
PRUNE_REFERENCES = {
    ('mnist', 'lenet5'): (
        'fp_2epochs', 'Torch-Pruning (Fang et al. 2023, DepGraph) on the same Caffe LeNet-5 from '
        'the same 2-epoch model: L1 magnitude, 50 % of every conv/dense layer\'s '
        'channels/units, 2 fine-tuning epochs at lr 0.01 (measured for the project\'s issue)',
        109_330, 0.9905, 0.991),
}
# (description, compression ratio at least, accuracy at least) of the pipeline runs.
PIPELINE_GOALS = {
    ('mnist', 'lenet5'): (
        ('>= 50x smaller than FP32 at >= 99.2 % (Deep Compression: 39x at 99.26 %)', 50.0, 0.992),
    ),
}
