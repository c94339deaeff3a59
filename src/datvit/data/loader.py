"""Datasets, transforms and loaders for training and evaluation, built so that a run can be resumed exactly.

Exact resumption needs the data order and every augmentation to be a function of (seed, epoch, position) only:

* ``EpochSampler`` draws the epoch's permutation from ``seed + epoch`` (as ``DistributedSampler`` does), shards it
  over ranks, and can start part-way into an epoch (``set_epoch(epoch, start=...)``) after a mid-epoch resume.
* ``SeededDataset`` runs each training sample's transform under RNGs seeded from (seed, epoch, index), so the
  augmentation of a sample does not depend on the number of DataLoader workers, on the number of ranks, or on
  where the run was interrupted; the global RNGs of the process are left as they were.
* Each loader has its own ``torch.Generator``, so creating an iterator never consumes the global RNG.

The transforms are timm's (``create_transform``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import signal
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from . import fashion_mnist
from .fashion_mnist import FashionMNIST
from .folder import CorruptSample, ImageFolderDataset, find_split_dir, is_image_folder_root

DATASET_ALIASES = {
    "fashion_mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "torch/fashion_mnist": "fashion_mnist",
    "torch/fashionmnist": "fashion_mnist",
    "folder": "folder",
    "imagefolder": "folder",
    "image_folder": "folder",
    "imagenet": "folder",
}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, decorrelated across seeds, epochs and indices."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def seed_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's CPU generator (not CUDA's: dropout on a GPU is left alone)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def preserved_rngs() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's CPU generator states after the block."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.default_generator.set_state(torch_state)


class EpochSampler(Sampler):
    """Indices of one epoch for one rank: a permutation seeded by ``seed + epoch`` (or the identity), padded to
    a multiple of ``num_replicas`` when ``pad`` (training) and strided over ranks like ``DistributedSampler``.

    ``set_epoch(epoch, start)`` skips the first ``start`` indices of this rank (a resumed epoch). With
    ``per_sample_seeds`` it yields ``(index, seed)`` pairs for ``SeededDataset``.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
        per_sample_seeds: bool = False,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.per_sample_seeds = per_sample_seeds
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def rank_indices(self) -> list[int]:
        """All indices of this rank in the current epoch (ignoring ``start``)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            indices = list(range(self.num_samples))
        if self.pad and self.num_samples:
            total = math.ceil(self.num_samples / self.num_replicas) * self.num_replicas
            indices += (indices * math.ceil(total / len(indices)))[: total - len(indices)]
        return indices[self.rank :: self.num_replicas]

    @property
    def epoch_length(self) -> int:
        """Samples of this rank in a whole epoch."""
        if self.pad:
            return math.ceil(self.num_samples / self.num_replicas)
        return len(range(self.rank, self.num_samples, self.num_replicas))

    def __iter__(self) -> Iterator:
        for index in self.rank_indices()[self.start :]:
            yield (index, sample_seed(self.seed, self.epoch, index)) if self.per_sample_seeds else index

    def __len__(self) -> int:
        return max(self.epoch_length - self.start, 0)


class FirstSamples(Dataset):
    """The first ``n`` samples of ``dataset`` (all when it has fewer): ``--train-subset`` / ``--eval-subset``.
    Attributes (``classes``, ``transform``, ...) read and write through to the dataset."""

    def __init__(self, dataset: Dataset, n: int):
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "n", min(int(n), len(dataset)))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not -self.n <= index < self.n:
            raise IndexError(index)
        return self.dataset[index % self.n]

    def __getattr__(self, name: str):
        return getattr(object.__getattribute__(self, "dataset"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.dataset, name, value)


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs ``base[index]`` (with its random transform) with the
    RNGs seeded by ``seed``; plain integer keys pass through. The process's RNG states are restored afterwards
    (once per batch through ``__getitems__``, which the DataLoader prefers), so training randomness such as drop
    path is unaffected by data loading in the main process."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _get(self, key):
        if isinstance(key, tuple):
            index, seed = key
            seed_rngs(seed)
            return self.dataset[index]
        return self.dataset[key]

    def __getitem__(self, key):
        with preserved_rngs():
            return self._get(key)

    def __getitems__(self, keys: Sequence[Any]) -> list:
        with preserved_rngs():
            return [self._get(key) for key in keys]


class Batch(NamedTuple):
    """A collated batch; ``images``/``targets`` are None when every sample of the batch was unreadable."""

    images: Optional[torch.Tensor]
    targets: Optional[torch.Tensor]
    corrupt: list


def split_corrupt(samples: Sequence[Any]) -> tuple[list, list]:
    """The readable samples and the unreadable ones (``CorruptSample``), each in order: what every collate
    function separates first, so that a batch goes on with what it can read and counts the rest."""
    return (
        [s for s in samples if not isinstance(s, CorruptSample)],
        [s for s in samples if isinstance(s, CorruptSample)],
    )


def collate_skip_corrupt(samples: Sequence[Any]) -> Batch:
    """Stack the readable samples and hand the unreadable ones (``CorruptSample``) on for counting."""
    good, bad = split_corrupt(samples)
    if not good:
        return Batch(None, None, bad)
    images, targets = default_collate(good)
    return Batch(images, targets, bad)


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM/SIGUSR1: a terminal's Ctrl-C and SLURM's SIGTERM/SIGUSR1 reach
    every process of the job, and a worker killed by one makes PyTorch's SIGCHLD handler raise in the main
    process while it finishes its step and writes the checkpoint (``datvit.train.preemption``). Workers exit when
    the main process closes the loader, or when it dies (their watchdog polls the parent)."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def create_loader(
    dataset: Dataset,
    batch_size: int,
    training: bool,
    workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    collate_fn: Callable[[list], Any] = collate_skip_corrupt,
) -> DataLoader:
    """A DataLoader with an ``EpochSampler`` (call ``loader.sampler.set_epoch`` each epoch). Training loaders
    shuffle, pad to the world size, drop the last partial batch and seed every sample's augmentation.

    Every task trains on this one loader, so all share its exact resume and its workers' indifference to stop
    signals; ``collate_fn`` is what a task's samples need (classification stacks images and labels, detection
    keeps lists of images of different sizes, ``datvit.dense.collate_detection``)."""
    sampler = EpochSampler(
        len(dataset), world_size, rank, shuffle=training, seed=seed, pad=training, per_sample_seeds=training
    )
    generator = torch.Generator()
    generator.manual_seed(seed + rank)
    return DataLoader(
        SeededDataset(dataset) if training else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        drop_last=training,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_ignores_stop_signals if workers > 0 else None,
    )


def resolve_dataset_kind(name: Optional[str], data_dir: Optional[str | os.PathLike]) -> str:
    """'fashion_mnist' or 'folder' from ``--dataset`` (timm-style names accepted), or guessed from ``--data-dir``:
    no directory means the built-in Fashion-MNIST."""
    if name:
        key = name.strip().lower().replace("-", "_")
        if key not in DATASET_ALIASES:
            raise ValueError(
                f"unknown dataset {name!r}: use 'fashion_mnist' (built in) or 'folder' (an "
                "ImageNet-style directory of train/<class>/ and val/<class>/ images)"
            )
        return DATASET_ALIASES[key]
    if data_dir is None:
        return "fashion_mnist"
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"data directory {data_dir} does not exist")
    if not os.path.isdir(data_dir):
        raise NotADirectoryError(f"data directory {data_dir} is a file, not a directory")
    if is_image_folder_root(data_dir):
        return "folder"
    try:
        fashion_mnist.find_fashion_mnist(data_dir)
        return "fashion_mnist"
    except fashion_mnist.DatasetIncompleteError:
        raise
    except fashion_mnist.DatasetNotFoundError:
        pass
    raise ValueError(
        f"{data_dir} is neither an image folder (train/<class>/*.jpg) nor a Fashion-MNIST directory; "
        "pass --dataset to say which"
    )


def create_dataset(
    kind: str,
    data_dir: Optional[str | os.PathLike],
    split: str,
    transform: Any = None,
    image_mode: str = "RGB",
    class_names: Optional[Sequence[str]] = None,
    download: bool = False,
) -> Dataset:
    """The ``split`` of a dataset of ``kind`` ('fashion_mnist' or 'folder'); images come out in ``image_mode``."""
    if kind == "fashion_mnist":
        return FashionMNIST(data_dir, split, transform=transform, image_mode=image_mode, download=download)
    if kind != "folder":
        raise ValueError(f"unknown dataset kind {kind!r}")
    if data_dir is None:
        raise ValueError("an image-folder dataset needs --data-dir")
    split_dir = find_split_dir(data_dir, split)
    if split_dir is None:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data directory not found: {data_dir}")
        if find_split_dir(data_dir, "train") is not None:
            raise FileNotFoundError(f"{data_dir} has no '{split}' split folder")
        split_dir = data_dir  # the directory itself holds the class folders
    return ImageFolderDataset(split_dir, transform=transform, image_mode=image_mode, class_names=class_names)


def _posterize_any_bits(img, bits_to_keep: int, **_):
    """timm's posterize, accepting 0 bits (a black image, as Pillow < 13 gave) — Pillow 13 rejects it."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_timm_posterize() -> None:
    """RandAugment 'inc1' asks for 0 bits at magnitude 10 (m9 + mstd noise reaches it); with Pillow >= 13 that
    raises mid-epoch. Route timm's posterize ops through a version that accepts it (idempotent)."""
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = _posterize_any_bits


def train_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    no_aug: bool = False,
    scale: Optional[Sequence[float]] = None,
    ratio: Optional[Sequence[float]] = None,
    hflip: float = 0.5,
    vflip: float = 0.0,
    color_jitter: Optional[float] = 0.4,
    auto_augment: Optional[str] = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
) -> Callable:
    """timm's training transform (random-resized crop, flips, RandAugment, random erasing)."""
    if auto_augment:
        _fix_timm_posterize()
    return create_transform(
        img_size,
        is_training=True,
        no_aug=no_aug,
        scale=tuple(scale) if scale else None,
        ratio=tuple(ratio) if ratio else None,
        hflip=hflip,
        vflip=vflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
    )


def eval_transform(data_config: Mapping[str, Any]) -> Callable:
    """timm's evaluation transform for a timm-style ``data_config`` (``input_size`` (C, H, W), ``mean``, ``std``,
    ``crop_pct``, ``interpolation``, ``crop_mode``): PIL image → resize to size / crop_pct, center crop, tensor,
    normalise. Training evaluates with it and inference (``datvit.inference``) preprocesses with it, from the
    data config a checkpoint records."""
    return create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=False,
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct", 0.875),
        crop_mode=data_config.get("crop_mode", "center"),
    )
