"""scikit-learn's bundled handwritten digits (1797 8x8 grayscale images, 10 classes) as an image dataset.

The train/val split is fixed (stratified, seed 0, 20 % val) so every run on every machine sees the same
images. Images are stored at 8x8 in [0, 1] and resized per sample, so a 224x224 model costs no extra memory.
Normalisation uses the digits' own train-split pixel mean/std (recorded below), not ImageNet's.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from vitdeploy.data.arrays import GrayArrayDataset, gray_data_config
from vitdeploy.data.specs import check_split, input_size_of

# Recorded normalisation: mean/std of every train-split pixel, in [0, 1] scale (float64, population std).
# Written down rather than recomputed at import so models trained on digits keep a fixed preprocessing;
# tests/test_data.py checks these still equal what the train split gives.
DIGITS_MEAN: float = 0.30538339422407795
DIGITS_STD: float = 0.3761191680900195

DIGITS_NUM_CLASSES = 10
DIGITS_CLASSES: list[str] = [str(i) for i in range(DIGITS_NUM_CLASSES)]
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_SIDE = 8  # native resolution
DIGITS_MAX_SHIFT = 1  # augmentation: random translation of up to this many native pixels


def digits_data_config(input_size: tuple[int, int, int] = (3, 32, 32)) -> dict[str, Any]:
    """A timm-style data config for models trained on digits (uses the recorded digits normalisation)."""
    return gray_data_config(input_size, DIGITS_MEAN, DIGITS_STD)


@functools.lru_cache(maxsize=1)
def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as float32 [N, 8, 8] in [0, 1], and their int64 labels."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn costs about a second

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return images, digits.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _split_indices() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _load_arrays()
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_VAL_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    return train_idx, val_idx


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into `load_digits()` of the fixed train or val split (a fresh copy, safe to modify)."""
    train_idx, val_idx = _split_indices()
    return (train_idx if check_split(split) == "train" else val_idx).copy()


def digits_train_stats() -> tuple[float, float]:
    """Mean/std of the train-split pixels in [0, 1] scale, computed from the data (DIGITS_MEAN/STD record them)."""
    images, _ = _load_arrays()
    pixels = images[digits_split_indices("train")].astype(np.float64)
    return float(pixels.mean()), float(pixels.std())


class DigitsDataset(GrayArrayDataset):
    """Items are (float32 [3, H, W] normalised image, int label)."""

    SPEC, NAME, MEAN, STD = "digits", "digits", DIGITS_MEAN, DIGITS_STD

    def __init__(
        self, split: str, input_size: tuple[int, int, int] = (3, 32, 32), augment: bool = False, seed: int = 0
    ) -> None:
        split = check_split(split)
        images, labels = _load_arrays()
        idx = digits_split_indices(split)
        super().__init__(split, torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]),  # [N, 8, 8] in [0, 1]
                         DIGITS_CLASSES, input_size, augment, seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.augment:
            img = self._shift(img)
        img = self._resize(img)
        img = (img - DIGITS_MEAN) / DIGITS_STD
        return img.repeat(3, 1, 1), int(self.labels[index])

    def _shift(self, img: torch.Tensor) -> torch.Tensor:
        """Translate by up to DIGITS_MAX_SHIFT pixels: zero-pad (the background is 0) and crop back to 8x8."""
        m = DIGITS_MAX_SHIFT
        dy, dx = torch.randint(0, 2 * m + 1, (2,), generator=self._gen).tolist()
        padded = F.pad(img, (m, m, m, m))
        return padded[dy : dy + DIGITS_SIDE, dx : dx + DIGITS_SIDE]

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        """[8, 8] -> [1, H, W], bilinear."""
        if (self.height, self.width) == img.shape:
            return img.unsqueeze(0).clone()
        out = F.interpolate(img[None, None], size=(self.height, self.width), mode="bilinear", align_corners=False)
        return out[0]


def load_digits_dataset(
    split: str, data_config: Mapping[str, Any] | None, augment: bool = False, seed: int = 0
) -> DigitsDataset:
    """Digits at the data config's input size (its mean/std are ignored: digits uses its own)."""
    input_size = input_size_of(data_config) if data_config is not None else (3, 32, 32)
    return DigitsDataset(split, input_size=input_size, augment=augment, seed=seed)
