"""The part the in-memory grayscale datasets (digits, fashion-mnist) share: a fixed split held as tensors, labels
as `targets`, a seeded augmentation generator that workers restart, and the `info` record written into model dirs.
A subclass sets SPEC, MEAN, STD and NAME and turns stored images into normalised [3, H, W] tensors."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from vitdeploy.data.specs import input_size_of


def gray_data_config(input_size: tuple[int, int, int], mean: float, std: float) -> dict[str, Any]:
    """A timm-style data config for models trained on one of these datasets: its recorded normalisation, repeated
    over the three input channels, bilinear resizing and no crop."""
    input_size_of({"input_size": input_size})
    return {
        "input_size": tuple(int(v) for v in input_size),
        "interpolation": "bilinear",
        "mean": (mean,) * 3,
        "std": (std,) * 3,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


class GrayArrayDataset(Dataset):
    """Items are (float32 [3, H, W] normalised image, int label)."""

    SPEC: str = ""  # the data spec's kind, as `info` records it
    NAME: str = ""  # how `info` names the normalisation's source
    MEAN: float = 0.0
    STD: float = 1.0

    def __init__(self, split: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 input_size: tuple[int, int, int], augment: bool, seed: int) -> None:
        self.split = split
        _, self.height, self.width = input_size_of({"input_size": input_size})
        self.augment = bool(augment) and split == "train"  # never augment evaluation data
        self.seed = int(seed)
        self.images, self.labels = images, labels
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self._gen = torch.Generator().manual_seed(self.seed)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def spec(self) -> str:
        return self.SPEC

    @property
    def info(self) -> dict[str, Any]:
        return {
            "spec": self.spec(),
            "split": self.split,
            "size": len(self),
            "num_classes": self.num_classes,
            "input_size": (3, self.height, self.width),
            "mean": (self.MEAN,) * 3,
            "std": (self.STD,) * 3,
            "interpolation": "bilinear",
            "normalisation": f"{self.NAME} train-split mean/std (recorded); the data config's mean/std are ignored",
            **self.extra_info(),
            "augment": self.augment,
            "seed": self.seed,
        }

    def extra_info(self) -> dict[str, Any]:
        return {}

    def reseed(self, seed: int) -> None:
        """Restart the augmentation RNG (make_loader calls this in each worker process)."""
        self._gen.manual_seed(int(seed) % (2**63))

    def __len__(self) -> int:
        return len(self.labels)
