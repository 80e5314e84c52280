"""Datasets named by a spec string: "digits" (scikit-learn's bundled 8x8 digits), "fashion-mnist[:PATH]" (the
official IDX files, from the Debian package dataset-fashion-mnist by default) or "imagefolder:PATH"."""
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
from vitdeploy.data.fashion import (
    FASHION_CLASSES,
    FASHION_MEAN,
    FASHION_NUM_CLASSES,
    FASHION_STD,
    FashionMNISTDataset,
    fashion_data_config,
    fashion_folder,
    fashion_split_indices,
    fashion_train_stats,
    read_idx,
)
from vitdeploy.data.folder import ImageFolderDataset, imagefolder_classes
from vitdeploy.data.loaders import (
    CalibrationSubset,
    calibration_subset,
    dataset_data_config,
    dataset_num_classes,
    load_dataset,
    make_loader,
)
from vitdeploy.data.specs import DataSpec, default_eval_split, parse_data_spec, splits_of

__all__ = [
    "DataSpec",
    "parse_data_spec",
    "load_dataset",
    "make_loader",
    "calibration_subset",
    "digits_data_config",
    "fashion_data_config",
    "dataset_data_config",
    "dataset_num_classes",
    "default_eval_split",
    "splits_of",
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
    "FASHION_MEAN",
    "FASHION_STD",
    "FASHION_CLASSES",
    "FASHION_NUM_CLASSES",
    "FashionMNISTDataset",
    "fashion_folder",
    "fashion_split_indices",
    "fashion_train_stats",
    "read_idx",
]
