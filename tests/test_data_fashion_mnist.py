"""Fashion-MNIST read offline from IDX files: parsing, locating, and clear errors when the files are missing."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from PIL import Image

from datvit.cli.main import main
from datvit.data import fashion_mnist as fm
from datvit.data.fashion_mnist import DatasetCorruptError, DatasetNotFoundError, FashionMNIST, read_idx
from train_helpers import make_fashion_mnist, write_idx


def test_read_idx_roundtrip_gzipped_and_plain(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte.gz", "b-idx3-ubyte"):
        write_idx(tmp_path / name, array)
        out = read_idx(tmp_path / name)
        assert out.shape == (2, 3, 4) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((5, 28, 28), np.uint8))
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DatasetCorruptError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DatasetCorruptError, match="magic"):
        read_idx(tmp_path / "foreign")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(DatasetCorruptError):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize("gz", [True, False])
def test_dataset_from_data_dir(tmp_path, gz):
    root = make_fashion_mnist(tmp_path / "fm", n_train=30, n_test=10, gz=gz)
    train = FashionMNIST(root, "train")
    test = FashionMNIST(root, "val")  # 'val' means the 10k test set for Fashion-MNIST
    assert len(train) == 30 and len(test) == 10 and test.split == "test"
    img, label = train[13]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28) and label == 3
    rgb, _ = FashionMNIST(root, "train", image_mode="RGB")[0]
    assert rgb.mode == "RGB"
    assert len(train.classes) == 10


def test_torchvision_layout_is_found(tmp_path):
    make_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert fm.find_fashion_mnist(tmp_path) == tmp_path / "FashionMNIST" / "raw"


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as info:
        FashionMNIST(tmp_path / "nothing-here")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--dataset-download" in message
    # no data dir and no Debian package: the same advice, without consulting the network
    monkeypatch.setattr(fm, "package_dirs", lambda timeout=10.0: [])
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (str(tmp_path / "not-installed"),))
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST()


def test_cli_reports_missing_dataset_without_traceback(tmp_path, capsys):
    code = main(
        [
            "train",
            "--dataset",
            "fashion_mnist",
            "--data-dir",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
            "--epochs",
            "1",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_split_is_a_clear_error(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm")
    with pytest.raises(ValueError, match="splits 'train'"):
        FashionMNIST(root, "holdout")


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_installed_package_has_the_real_dataset():
    test = FashionMNIST(split="test")
    assert len(test) == 10_000
    assert np.bincount(test.targets, minlength=10).tolist() == [1000] * 10
    assert 0.25 < test.images.mean() / 255 < 0.32  # the documented pixel statistics (mean 0.286)
