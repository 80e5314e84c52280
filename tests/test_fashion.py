"""Fashion-MNIST: the gzipped IDX reader (good, wrong magic, truncated), the one-line missing-data error (also from
the CLI), the fixed stratified train/val split, batched items and augmentation on generated files, and, where the
Debian package is installed, a small real slice."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vitdeploy.data import (
    FASHION_MEAN,
    FASHION_STD,
    DataSpec,
    dataset_data_config,
    dataset_num_classes,
    default_eval_split,
    digits_data_config,
    fashion_data_config,
    fashion_split_indices,
    fashion_train_stats,
    load_dataset,
    make_loader,
    parse_data_spec,
    read_idx,
    splits_of,
)
from vitdeploy.data import fashion
from vitdeploy.data.fashion import FASHION_DEFAULT_DIR, FASHION_FILES, stratified_holdout
from vitdeploy.errors import DataError

HAVE_DATA = all((FASHION_DEFAULT_DIR / n).is_file() for pair in FASHION_FILES.values() for n in pair)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="dataset-fashion-mnist is not installed")


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    magic = (code << 8 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def _fake_folder(folder: Path, n_train: int = 240, n_test: int = 50, seed: int = 0) -> Path:
    """The four IDX files with random images; train labels balanced (n_train / 10 per class)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": (n_train, np.repeat(np.arange(10), n_train // 10)), "test": (n_test, rng.integers(0, 10, n_test))}
    for part, (n, labels) in parts.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, :, :4] = 0  # a dark left margin, so a horizontal flip shows
        _write_gz(folder / FASHION_FILES[part][0], _idx_bytes(images))
        _write_gz(folder / FASHION_FILES[part][1], _idx_bytes(rng.permutation(labels).astype(np.uint8)))
    return folder


# ---------------------------------------------------------------- IDX reader


def test_idx_reader_round_trips(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    ints = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    assert np.array_equal(read_idx(_write_gz(tmp_path / "i.gz", _idx_bytes(images)), magic=0x803), images)
    got = read_idx(_write_gz(tmp_path / "n.gz", _idx_bytes(ints)))
    assert got.dtype == np.int32 and np.array_equal(got, ints)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = _idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8))
    return {
        "magic number 0x00000801": _write_gz(tmp_path / "labels-as-images.gz", _idx_bytes(np.zeros(4, dtype=np.uint8))),
        "truncated": _write_gz(tmp_path / "short.gz", good[:-100]),
        "longer than its header": _write_gz(tmp_path / "long.gz", good + b"\0"),
        "no IDX header": _write_gz(tmp_path / "text.gz", b"hello world"),
        "not a readable gzip": tmp_path / "cut.gz",
        "does not exist": tmp_path / "missing.gz",
    }


def test_malformed_idx_files_are_one_line_data_errors_naming_the_file(tmp_path):
    files = _bad_files(tmp_path)
    files["not a readable gzip"].write_bytes(gzip.compress(bytes(4000))[:30])  # a gzip stream cut short
    for expected, path in files.items():
        with pytest.raises(DataError) as e:
            read_idx(path, magic=0x803)
        message = str(e.value)
        assert expected in message and str(path) in message and "\n" not in message, message


def test_pair_checks(tmp_path):
    _fake_folder(tmp_path)
    labels = tmp_path / FASHION_FILES["train"][1]
    _write_gz(labels, _idx_bytes(np.full(239, 3, dtype=np.uint8)))  # one label short
    with pytest.raises(DataError, match="240 images, 239 labels"):
        load_dataset(f"fashion-mnist:{tmp_path}", "train", None)
    _write_gz(labels, _idx_bytes(np.full(240, 10, dtype=np.uint8)))
    with pytest.raises(DataError, match="label 10"):
        load_dataset(f"fashion-mnist:{tmp_path}", "val", None)


# ---------------------------------------------------------------- missing data: one line, from the library and the CLI


def _assert_missing_message(message: str) -> None:
    assert "apt-get install dataset-fashion-mnist" in message and "fashion-mnist:PATH" in message
    assert "\n" not in message


def test_missing_files_name_the_package_and_the_path_form(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist:/nonexistent", "train", None)
    _assert_missing_message(str(e.value))
    assert "/nonexistent does not exist" in str(e.value)
    (tmp_path / FASHION_FILES["train"][0]).write_bytes(b"")
    with pytest.raises(DataError) as e:  # a folder holding only some of the files names the missing ones
        load_dataset(f"fashion-mnist:{tmp_path}", "test", None)
    _assert_missing_message(str(e.value))
    assert FASHION_FILES["test"][0] in str(e.value) and FASHION_FILES["train"][0] not in str(e.value)
    monkeypatch.setattr(fashion, "FASHION_DEFAULT_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError) as e:  # the default location, as on a machine without the package
        load_dataset("fashion-mnist", "val", None)
    _assert_missing_message(str(e.value))


def test_cli_missing_data_is_one_line_and_exit_2(tmp_path, capsys):
    from vitdeploy.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "vit_fashion", "--data", "fashion-mnist:/nonexistent", "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    _assert_missing_message(lines[0])
    assert not out.exists()


# ---------------------------------------------------------------- specs and splits


@pytest.mark.parametrize("text,path", [("fashion-mnist", None), ("Fashion-MNIST", None), ("fashion-mnist:/a/b", "/a/b")])
def test_spec(text, path):
    spec = parse_data_spec(text)
    assert spec == DataSpec("fashion-mnist", path)
    assert parse_data_spec(str(spec)) == spec
    assert splits_of(spec) == ("train", "val", "test") and default_eval_split(text) == "test"
    assert dataset_num_classes(text) == 10


def test_spec_errors_and_defaults():
    with pytest.raises(DataError, match="needs a path"):
        parse_data_spec("fashion-mnist:")
    assert default_eval_split("digits") == "val" and default_eval_split("imagefolder:/x") == "val"
    with pytest.raises(DataError, match="unknown split 'test'"):  # digits has no test split
        load_dataset("digits", "test", digits_data_config((3, 8, 8)))
    with pytest.raises(DataError, match="'train', 'val' or 'test'"):
        load_dataset("fashion-mnist:/nonexistent", "dev", None)


def test_dataset_data_config():
    cfg = dataset_data_config("fashion-mnist", (3, 56, 56))
    assert cfg == fashion_data_config((3, 56, 56)) and cfg["mean"] == (FASHION_MEAN,) * 3
    assert dataset_data_config("digits", (3, 32, 32)) == digits_data_config((3, 32, 32))
    assert dataset_data_config("imagefolder:/x", (3, 224, 224)) is None


def test_stratified_holdout_sizes_disjoint_per_class():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(5), [600, 300, 240, 120, 60]))  # imbalanced, 1320 items
    val = stratified_holdout(labels, 110, seed=0)
    assert len(val) == 110 and len(np.unique(val)) == 110 and np.all(np.diff(val) > 0)
    assert np.bincount(labels[val], minlength=5).tolist() == [50, 25, 20, 10, 5]  # the same fraction of every class
    assert np.array_equal(val, stratified_holdout(labels, 110, seed=0))
    assert not np.array_equal(val, stratified_holdout(labels, 110, seed=1))
    odd = stratified_holdout(labels, 7, seed=0)  # largest remainders: still exactly 7
    assert len(odd) == 7


def test_generated_folder_splits_and_items(tmp_path):
    spec = f"fashion-mnist:{_fake_folder(tmp_path)}"
    cfg = fashion_data_config((3, 28, 28))
    train, val, test = (load_dataset(spec, s, cfg) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (220, 20, 50)
    assert np.bincount(val.labels.numpy(), minlength=10).tolist() == [2] * 10
    t, v = fashion_split_indices("train", tmp_path), fashion_split_indices("val", tmp_path)
    assert not set(t.tolist()) & set(v.tolist()) and sorted([*t, *v]) == list(range(240))
    img, label = test[3]
    assert img.shape == (3, 28, 28) and img.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(img[0], img[2])
    raw = torch.from_numpy(fashion.read_idx(tmp_path / FASHION_FILES["test"][0])[3]).float() / 255
    assert torch.allclose(img[0], (raw - FASHION_MEAN) / FASHION_STD)
    x, y = next(iter(make_loader(test, 16)))  # the batched fetch equals item-by-item
    assert torch.equal(x, torch.stack([test[i][0] for i in range(16)])) and y.tolist() == test.labels[:16].tolist()
    big = load_dataset(spec, "test", fashion_data_config((3, 56, 40)))
    assert big[0][0].shape == (3, 56, 40) and test.info["split"] == "test" and big.info["spec"] == spec


def test_augmentation_reproducible_effective_and_train_only(tmp_path):
    spec = f"fashion-mnist:{_fake_folder(tmp_path)}"
    cfg = fashion_data_config((3, 28, 28))
    first = load_dataset(spec, "train", cfg, augment=True, seed=3)
    again = load_dataset(spec, "train", cfg, augment=True, seed=3)
    plain = load_dataset(spec, "train", cfg)
    a, b = first.__getitems__(range(64)), again.__getitems__(range(64))
    p = plain.__getitems__(range(64))
    assert all(torch.equal(u[0], w[0]) for u, w in zip(a, b))
    assert sum(not torch.equal(u[0], w[0]) for u, w in zip(a, p)) > 48
    assert [u[1] for u in a] == [w[1] for w in p]  # labels untouched
    flipped = first._crop_and_flip(plain.images[:64].float())  # pixels only move: the padding adds zeros
    assert flipped.shape == (64, 28, 28) and flipped.sum() <= plain.images[:64].float().sum()
    for split in ("val", "test"):
        assert load_dataset(spec, split, cfg, augment=True).info["augment"] is False


# ---------------------------------------------------------------- the real files (Debian package)


@needs_data
def test_real_split_sizes_stratified_and_fixed():
    train, val = fashion_split_indices("train"), fashion_split_indices("val")
    assert (len(train), len(val)) == (55_000, 5_000)
    assert not set(train.tolist()) & set(val.tolist()) and len(np.union1d(train, val)) == 60_000
    labels = fashion._load_arrays(str(FASHION_DEFAULT_DIR), "train")[1]
    assert np.bincount(labels[val], minlength=10).tolist() == [500] * 10
    assert np.bincount(labels[train], minlength=10).tolist() == [5_500] * 10
    assert val[:5].tolist() == [0, 7, 10, 15, 20]  # the split is fixed: a change here changes every figure


@needs_data
def test_real_recorded_normalisation_matches_train_split():
    mean, std = fashion_train_stats()
    assert FASHION_MEAN == pytest.approx(mean, abs=1e-12) and FASHION_STD == pytest.approx(std, abs=1e-12)


@needs_data
def test_real_slice():
    test = load_dataset("fashion-mnist", "test", dataset_data_config("fashion-mnist", (3, 28, 28)))
    assert len(test) == 10_000 and test.classes[9] == "Ankle boot"
    assert np.bincount(test.labels.numpy(), minlength=10).tolist() == [1_000] * 10
    x, y = next(iter(make_loader(test, 256)))
    assert x.shape == (256, 3, 28, 28) and y[0].item() == 9  # the first test image is an ankle boot
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.3
