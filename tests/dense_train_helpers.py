"""Shared pieces of the dense engine/CLI tests: a tiny Fashion-MNIST scenes dataset and tiny model flags."""

from __future__ import annotations

from pathlib import Path

from train_helpers import make_fashion_mnist

# A 4-stage DAT v1 of ~0.5M parameters (dims 16–128, one block per stage but two in stage 3, D blocks in 3–4):
# a detector step on two 64×64 scenes takes ~0.5 s of one core.
TINY_BACKBONE = [
    "--model",
    "dat_tiny",
    "--model-kwargs",
    "dim_stem=16",
    "dims=[16,32,64,128]",
    "depths=[1,1,2,1]",
    "heads=[1,2,4,8]",
    "groups=[-1,-1,1,2]",
    "window_sizes=[4,4,4,4]",
    "img_size=64",
]
TINY_DETECTOR = [
    "--preset",
    "mask_rcnn_dat_nano_scenes",
    *TINY_BACKBONE,
    "--img-size",
    "64",
    "--max-size",
    "64",
    "--head-kwargs",
    "fpn_channels=32",
    "representation_size=64",
]
TINY_SEGMENTER = [
    "--preset",
    "upernet_dat_nano_scenes",
    *TINY_BACKBONE,
    "--head-kwargs",
    "decoder_channels=32",
    "aux_channels=16",
    "--crop-size",
    "64",
    "--img-scale",
    "64",
    "64",
]


def make_scenes(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """Fashion-MNIST scenes of 64×64 (COCO + ADE20K layouts) from a miniature Fashion-MNIST written for the test
    (the real one is a Debian package the suite does not need)."""
    from datvit.dense import make_fashion_scenes

    fm = make_fashion_mnist(root / "fm", n_train=40, n_test=20)
    make_fashion_scenes(root / "scenes", n_train, n_val, canvas=64, seed=0, fashion_mnist_dir=fm)
    return root / "scenes"
