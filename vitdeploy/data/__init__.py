"""Datasets named by a spec string: "digits" (scikit-learn's bundled 8x8 digits) or "imagefolder:PATH"."""
from vitdeploy.data.digits import (
    DIGITS_CLASSES,
    DIGITS_MEAN,
    DIGITS_NUM_CLASSES,
    DIGITS_STD,
    DigitsDataset,
    digits_data_config,
    digits_split_indices,
    digits_train_stats,
)
from vitdeploy.data.folder import ImageFolderDataset, imagefolder_classes
from vitdeploy.data.loaders import (
    CalibrationSubset,
    calibration_subset,
    dataset_num_classes,
    load_dataset,
    make_loader,
)
from vitdeploy.data.specs import DataSpec, parse_data_spec

__all__ = [
    "DataSpec",
    "parse_data_spec",
    "load_dataset",
    "make_loader",
    "calibration_subset",
    "digits_data_config",
    "dataset_num_classes",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DIGITS_CLASSES",
    "DIGITS_NUM_CLASSES",
    "DigitsDataset",
    "ImageFolderDataset",
    "CalibrationSubset",
    "digits_split_indices",
    "digits_train_stats",
    "imagefolder_classes",
]
