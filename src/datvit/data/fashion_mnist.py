"""Fashion-MNIST, the built-in default dataset, read offline from its gzipped IDX files.

The Debian package ``dataset-fashion-mnist`` installs the four files under ``/usr/share/datasets/fashion-mnist``;
a ``--data-dir`` holding the same files (gzipped or not, or torchvision's ``FashionMNIST/raw`` layout) works too.
Nothing is downloaded unless asked for (``download=True``, through torchvision), so a machine without network
never hangs here: a missing file raises ``DatasetNotFoundError`` whose message says how to get it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

DEBIAN_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Pixel statistics of the 60,000 training images (in [0, 1]).
MEAN = (0.2860,)
STD = (0.3530,)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_ALIASES = {"train": "train", "test": "test", "t10k": "test", "val": "test", "validation": "test"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message lists the places and how to get the files."""


class DatasetIncompleteError(DatasetNotFoundError):
    """A directory holds some of the four Fashion-MNIST files but not all; the message names the missing ones."""


class DatasetCorruptError(ValueError):
    """A dataset file exists but cannot be parsed (truncated download, wrong file)."""


def how_to_get() -> str:
    """The instructions shown whenever Fashion-MNIST is missing."""
    return (
        f"install the Debian package: sudo apt-get install {DEBIAN_PACKAGE}  (it puts the IDX files in "
        f"{SYSTEM_DIRS[0]}), or pass --data-dir DIR with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, or, on a machine with internet access, add "
        "--dataset-download to fetch them with torchvision into --data-dir"
    )


def _resolve_file(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_all_files(directory: Path) -> bool:
    return all(_resolve_file(directory, stem) for pair in FILES.values() for stem in pair)


def package_dirs(timeout: float = 10.0) -> list[Path]:
    """Directories holding the IDX files according to ``dpkg -L dataset-fashion-mnist`` (empty without dpkg)."""
    if shutil.which("dpkg") is None:
        return []
    try:
        listing = subprocess.run(
            ["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    dirs = []
    for line in listing.splitlines():
        if os.path.basename(line).startswith(FILES["train"][0]):
            dirs.append(Path(line).parent)
    return dirs


def candidate_dirs(data_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """Where Fashion-MNIST is looked for: under ``data_dir`` only when given, otherwise the package's places."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / "FashionMNIST" / "raw", root / "fashion-mnist", root / "fashion_mnist", root / "raw"]
    return package_dirs() + [Path(d) for d in SYSTEM_DIRS]


def find_fashion_mnist(data_dir: Optional[str | os.PathLike] = None) -> Path:
    """The directory with the four IDX files; raises ``DatasetNotFoundError`` with instructions otherwise."""
    places = candidate_dirs(data_dir)
    for directory in places:
        if directory.is_dir() and _has_all_files(directory):
            return directory
    for directory in places:  # some files but not all: name what is missing
        stems = [stem for pair in FILES.values() for stem in pair]
        missing = [stem + ".gz" for stem in stems if directory.is_dir() and not _resolve_file(directory, stem)]
        if directory.is_dir() and 0 < len(missing) < len(stems):
            raise DatasetIncompleteError(
                f"Fashion-MNIST in {directory} is incomplete: {', '.join(missing)} "
                f"missing (or the same name without .gz). To get it, {how_to_get()}."
            )
    looked = ", ".join(dict.fromkeys(str(p) for p in places))
    raise DatasetNotFoundError(f"Fashion-MNIST not found (looked in: {looked}). To get it, {how_to_get()}.")


def download_fashion_mnist(root: str | os.PathLike) -> Path:
    """Fetch the files with torchvision into ``root/FashionMNIST/raw`` (needs internet); returns that directory."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    try:
        TorchvisionFashionMNIST(os.fspath(root), train=True, download=True)
        TorchvisionFashionMNIST(os.fspath(root), train=False, download=True)
    except Exception as e:  # network errors come in many types (URLError, socket.timeout, RuntimeError)
        raise DatasetNotFoundError(
            f"downloading Fashion-MNIST into {root} failed ({type(e).__name__}: {e}). Offline, {how_to_get()}."
        ) from e
    return Path(root) / "FashionMNIST" / "raw"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into an array with the shape its header declares."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetCorruptError(f"{path} cannot be read ({e}); reinstall it ({how_to_get()})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetCorruptError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetCorruptError(
            f"{path} holds {len(data) - header} bytes of data, its header promises {expected} "
            f"(shape {shape}): truncated or damaged"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def canonical_split(split: str) -> str:
    """'train' or 'test' for the names users give ('val', 't10k', ...)."""
    try:
        return SPLIT_ALIASES[split.lower()]
    except KeyError:
        raise ValueError(
            f"Fashion-MNIST has splits 'train' (60,000 images) and 'test' (10,000), not {split!r}"
        ) from None


class FashionMNIST(Dataset):
    """Fashion-MNIST as 28×28 PIL images (mode ``image_mode``: 'L', or 'RGB' for 3-channel models).

    ``root`` is a directory with the IDX files; None finds the Debian package's copy.
    """

    classes = CLASSES

    def __init__(
        self,
        root: Optional[str | os.PathLike] = None,
        split: str = "train",
        transform: Optional[Callable[[Image.Image], Any]] = None,
        image_mode: str = "L",
        download: bool = False,
    ):
        self.split = canonical_split(split)
        if download and root is None:
            raise ValueError("download=True needs a root directory to download into")
        try:
            self.root = find_fashion_mnist(root)
        except DatasetNotFoundError:
            if not download:
                raise
            self.root = download_fashion_mnist(root)
        image_stem, label_stem = FILES[self.split]
        self.images = read_idx(_resolve_file(self.root, image_stem))
        self.targets = read_idx(_resolve_file(self.root, label_stem)).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self.targets):
            raise DatasetCorruptError(
                f"{self.root}: {self.split} images {self.images.shape} and labels {self.targets.shape} do not match"
            )
        self.transform = transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L")
        if self.image_mode != "L":
            img = img.convert(self.image_mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, {len(self)} images, root={str(self.root)!r})"
