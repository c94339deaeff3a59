"""Image folders with a corrupt file, the resumable sampler, and per-sample seeded augmentation."""

from __future__ import annotations

import random

import pytest
import torch

from datvit.data import (
    CorruptSample,
    EpochSampler,
    ImageFolderDataset,
    collate_skip_corrupt,
    create_dataset,
    create_loader,
    resolve_dataset_kind,
    train_transform,
)
from train_helpers import CLASSES, make_fashion_mnist, make_image_folder


def test_folder_classes_labels_and_corrupt_file(tmp_path):
    root = make_image_folder(tmp_path, per_class=4, val_per_class=2)
    ds = ImageFolderDataset(root / "train")
    assert ds.classes == list(CLASSES) and len(ds) == 3 * 4 + 1
    corrupt = [ds[i] for i in range(len(ds)) if isinstance(ds[i], CorruptSample)]
    assert len(corrupt) == 1 and corrupt[0].path.endswith("zz_broken.jpg")
    img, label = ds[len(ds) - 1]
    assert label == 2 and img.mode == "RGB"
    val = ImageFolderDataset(root / "val", class_names=["aardvark", *CLASSES])
    assert val[0][1] == 1  # the given class order wins


def test_collate_drops_unreadable_samples(tmp_path):
    batch = collate_skip_corrupt(
        [(torch.zeros(1, 2, 2), 0), CorruptSample("x.jpg", "OSError"), (torch.ones(1, 2, 2), 1)]
    )
    assert batch.images.shape == (2, 1, 2, 2) and batch.targets.tolist() == [0, 1]
    assert [c.path for c in batch.corrupt] == ["x.jpg"]
    empty = collate_skip_corrupt([CorruptSample("y.jpg", "OSError")])
    assert empty.images is None and len(empty.corrupt) == 1


def test_dataset_kind_detection(tmp_path):
    assert resolve_dataset_kind(None, None) == "fashion_mnist"
    assert resolve_dataset_kind("torch/fashion_mnist", None) == "fashion_mnist"
    assert resolve_dataset_kind(None, make_image_folder(tmp_path / "f", 1, 1)) == "folder"
    assert resolve_dataset_kind(None, make_fashion_mnist(tmp_path / "m")) == "fashion_mnist"
    with pytest.raises(ValueError, match="neither"):
        resolve_dataset_kind(None, tmp_path / "m" / "..")
    with pytest.raises(ValueError, match="unknown dataset"):
        resolve_dataset_kind("cifar", None)


def test_missing_val_split_raises_file_not_found(tmp_path):
    root = make_image_folder(tmp_path, 2, 1)
    with pytest.raises(FileNotFoundError, match="no 'holdout' split folder"):
        create_dataset("folder", root, "holdout")


def test_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    full = EpochSampler(10, shuffle=True, seed=5)
    full.set_epoch(3)
    order = list(full)
    assert sorted(order) == list(range(10))
    shards = []
    for rank in range(3):
        s = EpochSampler(10, num_replicas=3, rank=rank, shuffle=True, seed=5)
        s.set_epoch(3)
        shards.append(list(s))
    assert all(len(sh) == 4 for sh in shards)  # padded to 12 so every rank steps equally often
    assert set().union(*shards) == set(range(10))
    interleaved = [shards[r][i] for i in range(4) for r in range(3)]
    assert interleaved[:10] == order  # rank r takes every 3rd index of the same permutation
    full.set_epoch(3, start=6)
    assert list(full) == order[6:] and len(full) == 4  # a resumed epoch continues with the same indices
    full.set_epoch(4)
    assert list(full) != order  # a new permutation each epoch


def test_eval_sampler_is_not_padded():
    shards = [list(EpochSampler(10, 4, r, shuffle=False, pad=False)) for r in range(4)]
    assert sorted(sum(shards, [])) == list(range(10))


def _batches(loader, epoch=0):
    loader.sampler.set_epoch(epoch)
    return [b.images for b in loader]


def test_augmentation_depends_on_sample_not_on_workers_or_global_rng(tmp_path):
    root = make_image_folder(tmp_path, per_class=4, val_per_class=1, corrupt=False)
    tf = train_transform(32, [0.5] * 3, [0.5] * 3, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5)
    ds = create_dataset("folder", root, "train", transform=tf)
    loader0 = create_loader(ds, 4, training=True, workers=0, seed=1)
    torch.manual_seed(123)
    random.seed(123)
    state = torch.get_rng_state()
    a = _batches(loader0)
    assert torch.equal(torch.get_rng_state(), state) and random.random() == random.Random(123).random()
    b = _batches(create_loader(ds, 4, training=True, workers=2, seed=1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = _batches(loader0, epoch=1)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))  # but differs from epoch to epoch
