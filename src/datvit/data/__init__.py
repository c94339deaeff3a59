"""Datasets and loaders: the built-in Fashion-MNIST (offline), ImageNet-style folders, resumable loaders."""

from .fashion_mnist import DatasetCorruptError, DatasetNotFoundError, FashionMNIST, find_fashion_mnist
from .folder import CorruptSample, ImageFolderDataset
from .loader import (
    Batch,
    EpochSampler,
    SeededDataset,
    collate_skip_corrupt,
    create_dataset,
    create_loader,
    eval_transform,
    resolve_dataset_kind,
    train_transform,
)

__all__ = [
    "Batch",
    "CorruptSample",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EpochSampler",
    "FashionMNIST",
    "ImageFolderDataset",
    "SeededDataset",
    "collate_skip_corrupt",
    "create_dataset",
    "create_loader",
    "eval_transform",
    "find_fashion_mnist",
    "resolve_dataset_kind",
    "train_transform",
]
