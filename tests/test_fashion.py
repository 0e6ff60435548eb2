"""Fashion-MNIST in ifv.data and in the reference models: loading, layouts, errors, checkpoint names."""
from __future__ import annotations

import gzip
import struct

import pytest
import torch

import intrafusion_viz as ifv
from intrafusion_viz.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist_datasets, shared_path
from intrafusion_viz.evaluation import _reference as ref


def _write_idx(folder, prefix, images, labels, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    img = struct.pack(">IIII", 2051, len(images), 28, 28) + images.numpy().tobytes()
    lab = struct.pack(">II", 2049, len(labels)) + labels.numpy().astype("uint8").tobytes()
    for name, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)


def _fake(tmp_path, n_train=12, n_test=5, compress=True, layout_dir=None):
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (n_train, 28, 28), generator=gen, dtype=torch.uint8)
    test = torch.randint(0, 256, (n_test, 28, 28), generator=gen, dtype=torch.uint8)
    ytr, yte = torch.arange(n_train) % 10, torch.arange(n_test) % 10
    folder = tmp_path if layout_dir is None else tmp_path / layout_dir
    _write_idx(folder, "train", train, ytr, compress)
    _write_idx(folder, "t10k", test, yte, compress)
    return train, ytr, test, yte


@pytest.mark.parametrize("compress,layout", [(True, None), (False, None), (False, "FashionMNIST/raw")])
def test_loads_both_splits_in_either_layout(tmp_path, compress, layout):
    train_img, ytr, test_img, yte = _fake(tmp_path, compress=compress, layout_dir=layout)
    train, test = fashion_mnist_datasets(tmp_path)
    assert (len(train), len(test)) == (12, 5)
    x, y = train[3]
    assert x.shape == (1, 28, 28) and y == int(ytr[3])
    expected = (train_img[3].float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-6)
    assert test[4][1] == int(yte[4])


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*download=True"):
        fashion_mnist_datasets(tmp_path)


def test_corrupt_file_is_reported_as_corrupt(tmp_path):
    _fake(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(RuntimeError, match="corrupted"):
        fashion_mnist_datasets(tmp_path)


def test_reference_data_pads_and_normalises(tmp_path):
    train_img, ytr, _, yte = _fake(tmp_path)
    (x_train, y_train), (x_test, y_test) = ifv.reference_data(root=tmp_path, dataset="fashion-mnist")
    assert x_train.shape == (12, 1, 32, 32) and x_test.shape == (5, 1, 32, 32)
    assert torch.equal(y_train, ytr) and torch.equal(y_test, yte)
    inner = (train_img.float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    torch.testing.assert_close(x_train[:, 0, 2:30, 2:30], inner, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_train[:, 0, 0, 2:30], inner[:, 0], rtol=0, atol=1e-6)  # edge padding


def test_checkpoint_names_keep_mnist_names():
    assert ref.checkpoint_name("vgg11_bn", 1) == "vgg11_bn_s1.pt"
    assert ref.checkpoint_name("resnet18", 2, "fashion-mnist") == "resnet18_fashion-mnist_s2.pt"
    assert ref.checkpoint_name("resnet18", 2, "FashionMNIST") == "resnet18_fashion-mnist_s2.pt"
    with pytest.raises(ValueError, match="fashion-mnist"):
        ref.checkpoint_name("vgg11_bn", 0, "cifar10")


def test_fashion_resnet_is_width_16_and_vgg_unchanged():
    fashion = ref.build_reference("resnet18", "fashion-mnist")
    mnist = ref.build_reference("resnet18")
    assert fashion.conv1.out_channels == 16 and mnist.conv1.out_channels == 32
    assert ref.build_reference("vgg11_bn", "fashion-mnist").features[0].out_channels == 32


def test_missing_fashion_checkpoint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("INTRAFUSION_VIZ_REFERENCE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--dataset fashion-mnist"):
        ifv.reference_model("vgg11_bn", seed=0, dataset="fashion-mnist", train_if_missing=False)
    with pytest.raises(ValueError, match="No reference 'vit' for fashion-mnist"):
        ifv.reference_model("vit", dataset="fashion-mnist", train_if_missing=False)


def test_training_a_fashion_reference_saves_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("INTRAFUSION_VIZ_REFERENCE", str(tmp_path))
    monkeypatch.setitem(ref.FASHION_RECIPES, "vgg11_bn", dict(ref.FASHION_RECIPES["vgg11_bn"], epochs=1))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    model, acc = ref.train_reference("vgg11_bn", 0, data=((x, y), (x[:16], y[:16])), progress=False,
                                     dataset="fashion-mnist")
    assert (tmp_path / "vgg11_bn_fashion-mnist_s0.pt").is_file() and 0 <= acc <= 100
    again = ifv.reference_model("vgg11_bn", seed=0, dataset="fashion-mnist", train_if_missing=False)
    with torch.no_grad():
        torch.testing.assert_close(again(x[:4]), model(x[:4]))


def test_shared_fashion_mnist_has_70000_balanced_images():
    root = shared_path("data", "fashion-mnist")
    if root is None:
        pytest.skip("../shared/data/fashion-mnist not found (set INTRAFUSION_VIZ_SHARED): the real data set "
                    "is not checked")
    train, test = fashion_mnist_datasets(root)
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.equal(train.targets.bincount(), torch.full((10,), 6000))
    assert torch.equal(test.targets.bincount(), torch.full((10,), 1000))
