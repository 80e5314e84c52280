"""From a data spec to datasets, deterministic loaders and fixed calibration subsets."""
from __future__ import annotations

import numbers
from typing import Any, Mapping

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset, get_worker_info

from vitdeploy import distributed

from vitdeploy.data.digits import DIGITS_NUM_CLASSES, digits_data_config, load_digits_dataset
from vitdeploy.data.fashion import FASHION_NUM_CLASSES, fashion_data_config, load_fashion_dataset
from vitdeploy.data.folder import ImageFolderDataset, imagefolder_classes
from vitdeploy.data.specs import DataSpec, check_split, parse_data_spec, splits_of
from vitdeploy.errors import DataError


def load_dataset(
    spec: str | DataSpec,
    split: str,
    data_config: Mapping[str, Any] | None,
    augment: bool = False,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> Dataset:
    """The `split` ("train" | "val", and "test" for fashion-mnist) of the dataset named by `spec`, preprocessed for
    `data_config`.

    The result has .num_classes, .classes and .info; items are (float32 [3, H, W] normalised image, int label).
    Augmentation applies to the train split only. Digits and fashion-mnist use their own recorded mean/std
    (see dataset_data_config), imagefolder the config's. An image folder's files are verified first: a bad one is a
    DataError naming it, or, with `skip_bad_images`, left out and listed in the dataset's `.skipped`.
    """
    spec = parse_data_spec(spec)
    check_split(split, splits_of(spec))
    if spec.kind == "digits":
        return load_digits_dataset(split, data_config, augment=augment, seed=seed)
    if spec.kind == "fashion-mnist":
        return load_fashion_dataset(split, data_config, augment=augment, seed=seed, path=spec.path)
    if data_config is None:
        raise DataError("imagefolder data needs the model's data config (input_size, mean, std, ...)")
    return ImageFolderDataset(spec.path, split, data_config, augment=augment, skip_bad_images=skip_bad_images)


def dataset_num_classes(spec: str | DataSpec, data_config: Mapping[str, Any] | None = None) -> int:
    """Number of classes named by `spec`, without reading any image (data_config is accepted but unused)."""
    spec = parse_data_spec(spec)
    if spec.kind == "digits":
        return DIGITS_NUM_CLASSES
    if spec.kind == "fashion-mnist":
        return FASHION_NUM_CLASSES
    return len(imagefolder_classes(spec.path))


def dataset_data_config(spec: str | DataSpec, input_size: tuple[int, int, int]) -> dict[str, Any] | None:
    """The data config (input size, recorded mean/std, ...) of a dataset that carries its own normalisation
    (digits, fashion-mnist), at `input_size`; None for datasets that take the model's config (imagefolder)."""
    kind = parse_data_spec(spec).kind
    if kind == "digits":
        return digits_data_config(input_size)
    if kind == "fashion-mnist":
        return fashion_data_config(input_size)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _innermost(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _seed_worker(worker_id: int) -> None:
    """Give each worker's dataset its own augmentation seed, derived from the loader's seeded generator."""
    info = get_worker_info()
    base = _innermost(info.dataset)
    if hasattr(base, "reseed"):
        base.reseed(info.seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    shard: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeds) come from a torch.Generator seeded with `seed`. With `shard`
    under torchrun, each rank gets its share of every batch (`batch_size` is then the global batch)."""
    if not _is_int(batch_size) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    if not _is_int(num_workers) or num_workers < 0:
        raise DataError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    generator = torch.Generator().manual_seed(int(seed))
    workers = dict(num_workers=int(num_workers), worker_init_fn=_seed_worker if num_workers > 0 else None)
    if shard and distributed.world_size() > 1:  # the single-process batches, each split across the ranks
        if shuffle:  # training: equal shares, so DDP's average of the rank means is the global-batch mean
            distributed.check_global_batch(int(batch_size))
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        batches = distributed.ShardedBatchSampler(BatchSampler(order, int(batch_size), drop_last),
                                                  distributed.rank(), distributed.world_size())
        return DataLoader(dataset, batch_sampler=batches, generator=generator, **workers)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, generator=generator, drop_last=drop_last,
                      **workers)


class CalibrationSubset(Subset):
    """A Subset that keeps the parent's .classes, .num_classes and .info (with its own size)."""

    def __init__(self, dataset: Dataset, indices: list[int], seed: int) -> None:
        super().__init__(dataset, indices)
        self.seed = seed

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def info(self) -> dict[str, Any]:
        info = dict(getattr(self.dataset, "info", {}))
        info.update(size=len(self), calibration={"n": len(self), "of": len(self.dataset), "seed": self.seed})
        return info


def calibration_subset(dataset: Dataset, n: int, seed: int = 0) -> CalibrationSubset:
    """`n` items drawn without replacement with a fixed seed (all of them if n >= len), in index order."""
    if not _is_int(n) or n < 1:
        raise DataError(f"calibration size must be a positive integer, got {n!r}")
    total = len(dataset)
    if total == 0:
        raise DataError("cannot draw a calibration subset from an empty dataset")
    n = int(n)
    if n >= total:
        indices = list(range(total))
    else:
        generator = torch.Generator().manual_seed(int(seed))
        indices = sorted(torch.randperm(total, generator=generator)[:n].tolist())
    return CalibrationSubset(dataset, indices, int(seed))
