"""ImageNet-style folders (``<root>/<class>/<image>``), tolerant of files that cannot be decoded.

A corrupt or unreadable file does not stop a week-long run: ``__getitem__`` returns a ``CorruptSample`` marker
instead of raising, the collate function drops it, and the training loop counts and reports it (from the main
process, so DataLoader workers and non-zero ranks print nothing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

from PIL import Image
from torch.utils.data import Dataset

from ..utils.images import IMAGE_ERRORS, read_image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
# timm's names for the validation split, tried in this order.
SPLIT_DIR_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid"),
    "validation": ("validation", "val", "valid"),
    "test": ("test", "val", "validation"),
}


class CorruptSample(NamedTuple):
    """Stands in for an image that could not be read; ``collate_skip_corrupt`` removes it from the batch."""

    path: str
    error: str


def find_split_dir(root: str | os.PathLike, split: str) -> Optional[Path]:
    """``root/<split>`` (or its usual alternative names); None when absent."""
    root = Path(root)
    for name in SPLIT_DIR_NAMES.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    return None


def has_class_folders(root: str | os.PathLike) -> bool:
    """True when a sub-folder of ``root`` directly holds an image file (``root/<class>/<image>``)."""
    root = Path(root)
    if not root.is_dir():
        return False
    for sub in root.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMG_EXTENSIONS for f in sub.iterdir()):
            return True
    return False


def is_image_folder_root(root: str | os.PathLike) -> bool:
    """True when ``root`` looks like an ImageNet-style dataset: a train split of class folders, or class folders
    themselves (e.g. a ``val`` directory given to ``datvit eval``)."""
    train = find_split_dir(root, "train")
    if train is not None:
        return any(p.is_dir() for p in train.iterdir())
    return has_class_folders(root)


class ImageFolderDataset(Dataset):
    """Images under ``root/<class>/`` (any depth below the class folder), classes sorted by name.

    ``class_names`` fixes the label order (give the training split's classes to a validation split so labels
    agree even when a class folder is missing there). Returns ``(image, label)``, or ``CorruptSample`` for files
    PIL cannot decode.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Optional[Callable[[Image.Image], Any]] = None,
        image_mode: str = "RGB",
        class_names: Optional[Sequence[str]] = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if class_names is None:
            class_names = found
        else:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise ValueError(f"{self.root} has class folders the training split lacks: {unknown[:10]}")
        self.classes = list(class_names)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        extensions = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[str, int]] = []
        for name in found:
            for dirpath, dirnames, filenames in os.walk(self.root / name, followlinks=True):
                dirnames.sort()
                for filename in sorted(filenames):
                    if filename.lower().endswith(extensions):
                        self.samples.append((os.path.join(dirpath, filename), self.class_to_idx[name]))
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(extensions)}) in class folders under {self.root}")
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.image_mode = image_mode

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.samples[index][0], self.image_mode)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = self.load_image(index)
        except IMAGE_ERRORS as e:
            return CorruptSample(path, f"{type(e).__name__}: {e}")
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"
