"""Datasets: sources (TFDS, offline image folders, cache) and the on-device pipeline."""
from qprune.data.pipeline import (
    AUGMENTATIONS,
    Data,
    Split,
    epoch_permutation,
    load_data,
    random_crop_flip,
)
from qprune.data.sources import (
    DATASETS,
    DataError,
    DataNotFoundError,
    DatasetInfo,
    dataset_info,
    load_arrays,
)
