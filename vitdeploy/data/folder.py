"""Images in class subfolders, read and preprocessed by timm's own data machinery.

Layouts:
  PATH/train/<class>/*.png and PATH/val/<class>/*.png  -> the two splits (their class lists must match)
  PATH/<class>/*.png                                   -> one folder, used for whichever split is asked
Labels index the sorted class-folder names, so a class with no images in one split does not shift labels.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key
from torch.utils.data import Dataset

from vitdeploy.data.specs import check_split, input_size_of
from vitdeploy.errors import DataError

# data config keys passed on to timm.data.create_transform; anything else in the dict is ignored
TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _class_dirs(folder: Path) -> list[str]:
    """Immediate, non-hidden subfolder names in timm's (natural) sort order."""
    names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=natural_key)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder of class subfolders")


def resolve_imagefolder(path: str | Path, split: str) -> tuple[Path, list[str], str]:
    """(folder holding the split's class subfolders, class names, layout "train/val" | "single")."""
    check_split(split)
    root = Path(path).expanduser()
    _check_root(root)
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        classes = _matching_classes(train_dir, val_dir)
        return root / split, classes, "train/val"
    if train_dir.is_dir() != val_dir.is_dir():
        present, missing = ("train", "val") if train_dir.is_dir() else ("val", "train")
        raise DataError(f"data path {root} has a {present}/ folder but no {missing}/ folder: give both or neither")
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"data path {root} has no class subfolders (expected PATH/<class>/<image>)")
    return root, classes, "single"


def _at_least_two(root: Path, classes: list[str]) -> None:
    """One class makes a classifier that is right by construction: its 100 % means nothing."""
    if len(classes) < 2:
        raise DataError(f"data path {root} has {len(classes)} class folder ({', '.join(classes)}); a classifier "
                        f"needs at least 2 classes")


def _every_class_has_images(folder: Path, classes: list[str], samples: list) -> None:
    """A class folder with no (readable) image gives the model a class it never sees: with two folders and one
    empty, a classifier is right by construction again."""
    seen = {int(t) for _, t in samples}
    empty = [c for i, c in enumerate(classes) if i not in seen]
    if empty:
        exts = " ".join(get_img_extensions())
        raise DataError(f"class folder {folder / empty[0]} holds no readable images ({len(empty)} of {len(classes)} "
                        f"classes are empty; looked for {exts}): add images or remove the folder")


def _matching_classes(train_dir: Path, val_dir: Path) -> list[str]:
    train, val = _class_dirs(train_dir), _class_dirs(val_dir)
    if not train:
        raise DataError(f"data path {train_dir} has no class subfolders (expected train/<class>/<image>)")
    if train != val:
        only_train = sorted(set(train) - set(val), key=natural_key)
        only_val = sorted(set(val) - set(train), key=natural_key)
        raise DataError(
            f"class folders of {train_dir} and {val_dir} differ: only in train {only_train}, only in val {only_val}"
        )
    return train


def imagefolder_classes(path: str | Path) -> list[str]:
    """Class names of an imagefolder dataset without reading any image."""
    return resolve_imagefolder(path, "train")[1]


def _open_checked(file: str) -> Image.Image:
    """The image at `file`, opened and decoded to RGB; a corrupt, truncated or decompression-bomb file is a DataError
    naming it (timm's own dataset would log a warning and hand back the next image instead)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image {file} cannot be read ({_one_line(e)}); fix or remove it, or pass "
                        f"--skip-bad-images to leave such files out") from None


def _verify(file: str) -> None:
    """Check one file without decoding all of its pixels: the header, the size against PIL's decompression-bomb
    limit, and the file's structure (PIL's verify: chunk checksums for PNG)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                img.verify()
    except Exception as e:  # PIL raises many types for a bad file (struct.error, IndexError, ...): all mean "bad"
        raise DataError(f"image {file} cannot be read ({_one_line(e)}); fix or remove it, or pass "
                        f"--skip-bad-images to leave such files out") from None


def verified_samples(samples: list[tuple[str, int]], skip_bad: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples whose files pass `_verify`, files left out). A bad file is an error unless `skip_bad`, so that an
    accuracy is never silently measured on another set of images than the folder holds."""
    kept, skipped = [], []
    for file, target in samples:
        try:
            _verify(file)
        except DataError:
            if not skip_bad:
                raise
            skipped.append(str(file))
            continue
        kept.append((file, target))
    return kept, skipped


def _transform(data_config: Mapping[str, Any], is_training: bool):
    input_size_of(data_config)
    kwargs = {k: data_config[k] for k in TRANSFORM_KEYS if k in data_config}
    return create_transform(**kwargs, is_training=is_training)


class ImageFolderDataset(Dataset):
    """Items are (float32 [3, H, W] normalised image, int label), via timm's ImageDataset and create_transform."""

    def __init__(
        self, path: str | Path, split: str, data_config: Mapping[str, Any], augment: bool = False,
        skip_bad_images: bool = False,
    ) -> None:
        self.split = check_split(split)
        self.spec_path = str(path)
        self.folder, self.classes, self.layout = resolve_imagefolder(path, split)
        self.num_classes = len(self.classes)
        self.augment = bool(augment) and self.split == "train"
        self.data_config = dict(data_config)
        self._ds = self._open(self.folder, self.classes)
        samples, self.skipped = verified_samples(self._ds.reader.samples, skip_bad_images)
        if not samples:
            raise DataError(f"no readable images in {self.folder} ({len(self.skipped)} unreadable files skipped)")
        _at_least_two(self.folder, self.classes)
        if self.split == "train" or self.layout == "single":  # a val/ folder may lack a class; training may not
            _every_class_has_images(self.folder, self.classes, samples)
        self._ds.reader.samples = samples
        self._transform = _transform(self.data_config, is_training=self.augment)

    @staticmethod
    def _open(folder: Path, classes: list[str]) -> ImageDataset:
        class_to_idx = {name: i for i, name in enumerate(classes)}
        try:
            return ImageDataset(str(folder), class_map=class_to_idx)
        except RuntimeError:  # timm: "Found 0 images in subfolders of ..."
            exts = " ".join(get_img_extensions())
            raise DataError(f"no images in the class subfolders of {folder} (looked for {exts})") from None

    @property
    def targets(self) -> list[int]:
        return [int(t) for _, t in self._ds.reader.samples]

    @property
    def info(self) -> dict[str, Any]:
        cfg = self.data_config
        return {
            "spec": f"imagefolder:{self.spec_path}",
            "split": self.split,
            "size": len(self),
            "num_classes": self.num_classes,
            "input_size": input_size_of(cfg),
            "mean": tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
            "std": tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD)),
            "interpolation": cfg.get("interpolation", "bilinear"),
            "crop_pct": cfg.get("crop_pct"),
            "crop_mode": cfg.get("crop_mode"),
            "normalisation": "model data config",
            "folder": str(self.folder),
            "layout": self.layout,
            "augment": self.augment,
            "skipped_images": len(self.skipped),
        }

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        file, target = self._ds.reader.samples[index]
        return self._transform(_open_checked(file)), int(target)
