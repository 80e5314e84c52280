"""Fashion-MNIST (70,000 28x28 grayscale images of clothes, 10 classes) read from its official gzipped IDX files.

Where the files come from: by default the folder the Debian package `dataset-fashion-mnist` installs; the spec
`fashion-mnist:PATH` names any folder holding the same four files.

Splits:
  train  the official 60,000 training images minus a fixed, stratified 1/12 (5,000: 500 per class) held out
  val    that held-out 5,000, for model selection and calibration
  test   the official 10,000 test images; accuracy claims rest on it, and training never looks at it
The held-out images are chosen per class by a fixed integer hash of (seed, index), not by an RNG stream, so the
split is the same on every machine and every numpy version.

Images are kept in memory as uint8 [N, 28, 28] and transformed a batch at a time with tensor ops (DataLoader's
batched `__getitems__`): scale to [0, 1], optional augmentation (random crop from a 2-pixel zero padding, random
horizontal flip), bilinear resize to the model's input size, normalisation with the train split's recorded
mean/std, and replication to 3 channels.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import math
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from vitdeploy.data.arrays import GrayArrayDataset, gray_data_config
from vitdeploy.data.specs import check_split, input_size_of
from vitdeploy.errors import DataError

FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_SPLITS = ("train", "val", "test")
FASHION_CLASSES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_NUM_CLASSES = 10
FASHION_SIDE = 28
FASHION_VAL_FRACTION = 1 / 12  # 5,000 of the official 60,000
FASHION_SPLIT_SEED = 0
FASHION_PAD = 2  # augmentation: random crop of 28x28 from the image zero-padded by this many pixels

# Recorded normalisation: mean/std of every train-split pixel (55,000 images), in [0, 1] scale (float64, population
# std). Written down so models keep a fixed preprocessing; tests/test_fashion.py checks them against the data.
FASHION_MEAN: float = 0.28616110680635887
FASHION_STD: float = 0.35308217485117194

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ----------------------------------------------------------------------------------------------- IDX files
def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """The array in a gzipped IDX file. With `magic`, the file's magic number (type code and dim count) must equal it.
    Any unreadable, mistyped, truncated or over-long file is a DataError naming the file."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file {path} is not a readable gzip file ({' '.join(str(e).split()) or type(e).__name__})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file {path} has no IDX header (first bytes {raw[:4].hex() or 'none'})")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DataError(f"IDX file {path} has magic number {found:#010x}, expected {magic:#010x}")
    ndim, dtype = raw[3], _IDX_DTYPES[raw[2]]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated: its header needs {header} bytes, it has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"IDX file {path} is {state}: shape {list(shape)} needs {expected} bytes, it has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_folder(path: str | Path | None = None) -> Path:
    """The folder holding the four IDX files (the Debian package's by default), checked to hold all four."""
    folder = FASHION_DEFAULT_DIR if path is None else Path(path).expanduser()
    names = [n for pair in FASHION_FILES.values() for n in pair]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        where = f"{folder} has no {', '.join(missing)}" if folder.is_dir() else f"{folder} does not exist"
        raise DataError(f"Fashion-MNIST files not found: {where}; install them with `apt-get install "
                        f"{FASHION_PACKAGE}` or pass a folder holding the four IDX .gz files as fashion-mnist:PATH")
    return folder


def read_fashion_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels [N] from one pair of IDX files, checked against each other."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (FASHION_SIDE, FASHION_SIDE):
        raise DataError(f"IDX file {images_path} holds images of {list(images.shape[1:])}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"IDX files {images_path} and {labels_path} disagree: {len(images)} images, {len(labels)} labels")
    if len(labels) and int(labels.max()) >= FASHION_NUM_CLASSES:
        raise DataError(f"IDX file {labels_path} has label {int(labels.max())}, expected 0..9")
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _load_arrays(folder: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FASHION_FILES[part]
    return read_fashion_pair(Path(folder) / images_name, Path(folder) / labels_name)


# ----------------------------------------------------------------------------------------------- split
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed, well-spread integer hash (uint64 arithmetic wraps by design)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def stratified_holdout(labels: np.ndarray, val_size: int, seed: int = FASHION_SPLIT_SEED) -> np.ndarray:
    """Sorted indices of `val_size` items held out in proportion to each class's count (largest remainder), the
    items of each class chosen by the smallest hash of (seed, index)."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= val_size <= n:
        raise DataError(f"cannot hold out {val_size} of {n} items")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * val_size / max(n, 1)
    quota = np.floor(exact).astype(np.int64)
    extra = val_size - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:extra]] += 1
    keys = _mix64(np.arange(n, dtype=np.uint64) + _mix64(np.array([seed], dtype=np.uint64))[0])
    held = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(labels == c)
        held.append(idx[np.argsort(keys[idx], kind="stable")[:q]])
    return np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)


def fashion_val_size(n_train: int) -> int:
    return int(round(n_train * FASHION_VAL_FRACTION))


def fashion_split_indices(split: str, path: str | Path | None = None) -> np.ndarray:
    """Indices into the official training file of the train or val split (a fresh copy); test has no such indices."""
    check_split(split, ("train", "val"))
    _, labels = _load_arrays(str(fashion_folder(path)), "train")
    val = stratified_holdout(labels, fashion_val_size(len(labels)))
    if split == "val":
        return val
    keep = np.ones(len(labels), dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep)


def fashion_train_stats(path: str | Path | None = None) -> tuple[float, float]:
    """Mean/std of the train-split pixels in [0, 1] scale, computed from the data (FASHION_MEAN/STD record them)."""
    images, _ = _load_arrays(str(fashion_folder(path)), "train")
    counts = np.bincount(images[fashion_split_indices("train", path)].reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float((counts * values).sum() / counts.sum())
    var = float((counts * (values - mean) ** 2).sum() / counts.sum())
    return mean, math.sqrt(var)


def fashion_data_config(input_size: tuple[int, int, int] = (3, 28, 28)) -> dict[str, Any]:
    """A timm-style data config for models trained on Fashion-MNIST (the recorded train-split normalisation)."""
    return gray_data_config(input_size, FASHION_MEAN, FASHION_STD)


# ----------------------------------------------------------------------------------------------- dataset
@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run a batch transform on one intra-op thread: its ops are ~1e5 elements, where fanning out costs more than
    it saves (10x more on a busy 2-core machine, where a second thread waits for a core)."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FashionMNISTDataset(GrayArrayDataset):
    """Items are (float32 [3, H, W] normalised image, int label); the loader fetches whole batches at once."""

    SPEC, NAME, MEAN, STD = "fashion-mnist", "fashion-mnist", FASHION_MEAN, FASHION_STD

    def __init__(self, split: str, input_size: tuple[int, int, int] = (3, 28, 28), augment: bool = False,
                 seed: int = 0, path: str | Path | None = None) -> None:
        split = check_split(split, FASHION_SPLITS)
        self.path = None if path is None else str(path)
        self.folder = str(fashion_folder(path))
        images, labels = _load_arrays(self.folder, "test" if split == "test" else "train")
        if split != "test":
            idx = fashion_split_indices(split, path)
            images, labels = images[idx], labels[idx]
        super().__init__(split, torch.from_numpy(np.ascontiguousarray(images)),  # uint8 [N, 28, 28]
                         torch.from_numpy(np.ascontiguousarray(labels)), FASHION_CLASSES, input_size, augment, seed)

    def spec(self) -> str:
        return "fashion-mnist" if self.path is None else f"fashion-mnist:{self.path}"

    def extra_info(self) -> dict[str, Any]:
        return {"folder": self.folder}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        with _one_thread():
            x = self.transform(self.images[idx])  # B, 3, H, W
        return list(zip(x.unbind(0), self.labels[idx].tolist()))

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 28, 28] -> normalised float32 [B, 3, H, W] (augmented when this is an augmenting train split)."""
        x = images.to(torch.float32) / 255.0  # B, 28, 28
        if self.augment:
            x = self._crop_and_flip(x)
        if (self.height, self.width) != (FASHION_SIDE, FASHION_SIDE):
            x = F.interpolate(x[:, None], size=(self.height, self.width), mode="bilinear", align_corners=False)[:, 0]
        x = (x - FASHION_MEAN) / FASHION_STD
        return x[:, None].repeat(1, 3, 1, 1)  # B, 3, H, W

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Per image: a random 28x28 window of the image zero-padded by FASHION_PAD, mirrored left-right half the time."""
        b, side, p = x.shape[0], FASHION_SIDE, FASHION_PAD
        width = side + 2 * p
        padded = F.pad(x, (p, p, p, p)).reshape(b, width * width)  # B, 32*32 (the background is 0)
        dy, dx = torch.randint(0, 2 * p + 1, (2, b), generator=self._gen)
        flip = torch.rand(b, generator=self._gen) < 0.5
        ar = torch.arange(side)
        rows = dy[:, None] + ar  # B, 28
        cols = dx[:, None] + torch.where(flip[:, None], side - 1 - ar, ar)  # B, 28
        flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, side * side)  # B, 784
        return padded.gather(1, flat).reshape(b, side, side)


def load_fashion_dataset(split: str, data_config: Mapping[str, Any] | None, augment: bool = False, seed: int = 0,
                         path: str | Path | None = None) -> FashionMNISTDataset:
    """Fashion-MNIST at the data config's input size (its mean/std are ignored: the recorded ones are used)."""
    input_size = input_size_of(data_config) if data_config is not None else (3, FASHION_SIDE, FASHION_SIDE)
    return FashionMNISTDataset(split, input_size=input_size, augment=augment, seed=seed, path=path)
