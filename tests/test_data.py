"""vitdeploy.data: spec parsing, the fixed digits split, imagefolder via timm, loaders and calibration subsets."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from vitdeploy.data import (
    DIGITS_MEAN,
    DIGITS_STD,
    DataSpec,
    calibration_subset,
    dataset_num_classes,
    digits_data_config,
    digits_split_indices,
    digits_train_stats,
    load_dataset,
    make_loader,
    parse_data_spec,
)
from vitdeploy.errors import DataError

TINY_CONFIG = {
    "input_size": (3, 16, 16),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "crop_pct": 1.0,
    "crop_mode": "center",
}


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("text", ["digits", "imagefolder:/data/imagenet", "imagefolder:rel/dir", "imagefolder:/a:b"])
def test_spec_round_trips(text):
    spec = parse_data_spec(text)
    assert str(spec) == text
    assert parse_data_spec(str(spec)) == spec


def test_spec_fields():
    assert parse_data_spec("digits") == DataSpec("digits", None)
    assert parse_data_spec(" Digits ") == DataSpec("digits", None)
    assert parse_data_spec("imagefolder:/x/y") == DataSpec("imagefolder", "/x/y")


@pytest.mark.parametrize("text", ["cifar10", "", "digits:/x", "imagefolder", "imagefolder:", "imagefolder:  "])
def test_bad_specs_raise_one_line(text):
    with pytest.raises(DataError) as e:
        parse_data_spec(text)
    assert "\n" not in str(e.value)


def test_unknown_spec_names_accepted_forms():
    with pytest.raises(DataError, match="digits.*imagefolder:PATH"):
        parse_data_spec("mnist")


# ---------------------------------------------------------------- digits


def test_digits_split_fixed_stratified_disjoint():
    train, val = digits_split_indices("train"), digits_split_indices("val")
    assert (len(train), len(val)) == (1437, 360)
    assert np.array_equal(train, digits_split_indices("train"))
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1797))
    from sklearn.datasets import load_digits

    y = load_digits().target
    train_frac = np.bincount(y[train], minlength=10) / len(train)
    val_frac = np.bincount(y[val], minlength=10) / len(val)
    assert np.abs(train_frac - val_frac).max() < 0.01


def test_digits_recorded_normalisation_matches_train_split():
    mean, std = digits_train_stats()
    assert DIGITS_MEAN == pytest.approx(mean, abs=1e-12)
    assert DIGITS_STD == pytest.approx(std, abs=1e-12)
    cfg = digits_data_config((3, 24, 24))
    assert cfg["mean"] == (DIGITS_MEAN,) * 3 and cfg["std"] == (DIGITS_STD,) * 3
    assert cfg["input_size"] == (3, 24, 24) and cfg["crop_pct"] == 1.0


def test_digits_items_sized_and_normalised():
    # a foreign mean/std in the config must be ignored: digits always uses its own
    cfg = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    ds = load_dataset("digits", "train", cfg)
    assert len(ds) == 1437 and ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    assert x.shape == (1437, 3, 8, 8) and x.dtype == torch.float32
    per_channel_mean = x.mean(dim=(0, 2, 3))
    per_channel_std = x.std(dim=(0, 2, 3))
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel_std, torch.ones(3), atol=1e-3)
    assert ds.info["mean"] == (DIGITS_MEAN,) * 3 and ds.info["size"] == 1437


def test_digits_resized_and_labelled():
    ds = load_dataset(DataSpec("digits"), "val", digits_data_config((3, 32, 40)))
    img, label = ds[0]
    assert img.shape == (3, 32, 40) and isinstance(label, int) and 0 <= label < 10
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert ds.info["split"] == "val" and ds.info["input_size"] == (3, 32, 40)
    assert dataset_num_classes("digits", None) == 10


def test_digits_augmentation_reproducible_and_effective():
    cfg = digits_data_config((3, 16, 16))
    first = load_dataset("digits", "train", cfg, augment=True, seed=3)
    again = load_dataset("digits", "train", cfg, augment=True, seed=3)
    plain = load_dataset("digits", "train", cfg)
    a = torch.stack([first[i][0] for i in range(16)])
    b = torch.stack([again[i][0] for i in range(16)])
    p = torch.stack([plain[i][0] for i in range(16)])
    assert torch.equal(a, b)
    assert not torch.equal(a, p)
    # val is never augmented, even when asked
    val_aug = load_dataset("digits", "val", cfg, augment=True)
    val = load_dataset("digits", "val", cfg)
    assert torch.equal(val_aug[0][0], val[0][0]) and val_aug.info["augment"] is False


# ---------------------------------------------------------------- loaders and calibration


def test_loader_deterministic_shuffle():
    ds = load_dataset("digits", "val", digits_data_config((3, 8, 8)))
    labels = lambda seed: torch.cat([y for _, y in make_loader(ds, 64, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(labels(1), labels(1))
    assert not torch.equal(labels(1), labels(2))
    x, y = next(iter(make_loader(ds, 32)))
    assert x.shape == (32, 3, 8, 8) and y.dtype == torch.int64
    assert len(make_loader(ds, 100, drop_last=True)) == 3


def test_calibration_subset_fixed():
    ds = load_dataset("digits", "val", digits_data_config((3, 8, 8)))
    sub = calibration_subset(ds, 50, seed=7)
    assert len(sub) == 50 and len(set(sub.indices)) == 50
    assert sub.indices == calibration_subset(ds, 50, seed=7).indices
    assert sub.indices != calibration_subset(ds, 50, seed=8).indices
    assert len(calibration_subset(ds, 10_000)) == len(ds)
    assert sub.num_classes == 10 and sub.info["size"] == 50


# ---------------------------------------------------------------- imagefolder


def _write_images(folder: Path, classes: list[str], per_class: int = 3, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")


def test_imagefolder_train_val_layout(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], per_class=3)
    _write_images(tmp_path / "val", ["cat", "dog"], per_class=2)
    spec = f"imagefolder:{tmp_path}"
    train = load_dataset(spec, "train", TINY_CONFIG)
    val = load_dataset(spec, "val", TINY_CONFIG)
    assert (len(train), len(val)) == (6, 4)
    assert train.classes == val.classes == ["cat", "dog"] and train.num_classes == 2
    assert sorted(y for _, y in (val[i] for i in range(len(val)))) == [0, 0, 1, 1]
    img, label = train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and isinstance(label, int)
    assert val.info["layout"] == "train/val" and val.info["size"] == 4 and val.info["std"] == (0.25,) * 3
    aug = load_dataset(spec, "train", TINY_CONFIG, augment=True)
    assert aug[0][0].shape == (3, 16, 16)
    assert dataset_num_classes(spec, TINY_CONFIG) == 2


def test_imagefolder_single_layout_with_timm_model_config(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2)
    cfg = timm.data.resolve_data_config({}, model=model)
    cfg["input_size"] = (3, 32, 32)  # the pretrained cfg still says 224
    _write_images(tmp_path, ["a", "b"], per_class=2)
    for split in ("train", "val"):
        ds = load_dataset(f"imagefolder:{tmp_path}", split, cfg)
        assert len(ds) == 4 and ds.classes == ["a", "b"] and ds.info["layout"] == "single"
    x, y = next(iter(make_loader(ds, 4)))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    with torch.no_grad():
        assert model(x).shape == (4, 2)


# ---------------------------------------------------------------- every bad input: DataError, one line


def _bad_inputs(tmp_path: Path) -> dict[str, Callable[[], object]]:
    missing = tmp_path / "nope"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = tmp_path / "no_images"
    (no_images / "cat").mkdir(parents=True)
    (no_images / "cat" / "notes.txt").write_text("x")
    unreadable = tmp_path / "unreadable"
    (unreadable / "cat").mkdir(parents=True)
    (unreadable / "cat" / "0.png").write_bytes(b"not a png")
    mismatch = tmp_path / "mismatch"
    _write_images(mismatch / "train", ["cat", "dog"], per_class=1, size=4)
    _write_images(mismatch / "val", ["cat", "cow"], per_class=1, size=4)
    half = tmp_path / "half"
    _write_images(half / "train", ["cat"], per_class=1, size=4)
    single = tmp_path / "single"
    _write_images(single, ["cat"], per_class=2, size=4)
    ds = load_dataset("digits", "val", digits_data_config((3, 8, 8)))
    load = lambda path: load_dataset(f"imagefolder:{path}", "val", TINY_CONFIG)  # noqa: E731
    return {
        "does not exist": lambda: load(missing),
        "is a file": lambda: load(a_file),
        "no class subfolders": lambda: load(empty),
        "no images": lambda: load(no_images),
        "0.png cannot be read": lambda: load(unreadable),  # a corrupt image is named, never replaced by another
        "at least 2 classes": lambda: load(single),
        "differ": lambda: load(mismatch),
        "no val/ folder": lambda: load(half),
        "unknown data spec": lambda: load_dataset("cifar", "val", TINY_CONFIG),
        "needs a path": lambda: load_dataset("imagefolder:", "val", TINY_CONFIG),
        "unknown split": lambda: load_dataset("digits", "test", TINY_CONFIG),
        "input_size": lambda: load_dataset("digits", "val", {"mean": (0.5,) * 3}),
        "batch size": lambda: make_loader(ds, 0),
        "calibration size": lambda: calibration_subset(ds, 0),
    }


def test_bad_inputs_raise_data_error_with_one_line(tmp_path):
    for expected, call in _bad_inputs(tmp_path).items():
        with pytest.raises(DataError) as e:
            call()
        message = str(e.value)
        assert expected in message, (expected, message)
        assert "\n" not in message and message.strip() == message


def test_mismatched_classes_named(tmp_path):
    _write_images(tmp_path / "train", ["cat", "dog"], per_class=1, size=4)
    _write_images(tmp_path / "val", ["cat", "cow"], per_class=1, size=4)
    with pytest.raises(DataError, match=r"only in train \['dog'\], only in val \['cow'\]"):
        dataset_num_classes(f"imagefolder:{tmp_path}")
