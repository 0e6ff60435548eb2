"""Datasets: offline digits, and MNIST/CIFAR loaded by torchvision from fabricated files."""

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from intrafusion_viz import data as D

SHARED_MNIST = D.shared_path("data", "mnist") or Path("no-shared-folder")

# ----------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_labels():
    d = D.load_digits_tensors(test_fraction=0.25, seed=0)
    assert d.x_train.shape == (1347, 1, 8, 8) and d.x_test.shape == (450, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.y_test.dtype == torch.int64
    assert set(d.y_train.tolist()) == set(range(10)) and set(d.y_test.tolist()) == set(range(10))
    # Normalised with the train statistics (tolerance: float32 reductions over 86k pixels).
    assert abs(float(d.x_train.mean())) < 1e-5
    assert abs(float(d.x_train.std()) - 1.0) < 1e-5
    # Undoing the normalisation gives pixels / 16 in [0, 1].
    pixels = d.x_test * d.std + d.mean
    assert float(pixels.min()) > -1e-5 and float(pixels.max()) < 1 + 1e-5


def test_digits_flatten():
    d = D.load_digits_tensors(flatten=True)
    assert d.x_train.shape == (1347, 64) and d.x_test.shape == (450, 64)
    images = D.load_digits_tensors(flatten=False)
    assert torch.equal(d.x_train, images.x_train.reshape(-1, 64))


def test_digits_split_is_seeded():
    a, b = D.load_digits_tensors(seed=3), D.load_digits_tensors(seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = D.load_digits_tensors(seed=4)
    assert not torch.equal(a.y_test, c.y_test)


def test_digits_split_is_stratified():
    d = D.load_digits_tensors(test_fraction=0.25, seed=1)
    test_counts = torch.bincount(d.y_test, minlength=10)
    total_counts = test_counts + torch.bincount(d.y_train, minlength=10)
    expected = total_counts.double() * len(d.y_test) / total_counts.sum()
    assert (test_counts.double() - expected).abs().max() <= 1.0


def test_digits_rejects_bad_fraction():
    with pytest.raises(ValueError):
        D.load_digits_tensors(test_fraction=1.0)


def test_digits_loaders_are_seeded():
    first = [y for _, y in D.digits_loaders(batch_size=32, seed=5)[0]]
    again = [y for _, y in D.digits_loaders(batch_size=32, seed=5)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    train, test = D.digits_loaders(batch_size=32, seed=5, flatten=True)
    x, y = next(iter(train))
    assert x.shape == (32, 64) and y.shape == (32,)
    assert sum(len(y) for _, y in test) == 450


def test_make_loader_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    loader = D.make_loader(torch.utils.data.TensorDataset(torch.arange(10)), 4, shuffle=True, seed=0)
    order = torch.cat([b[0] for b in loader])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sorted(order.tolist()) == list(range(10))


# ----------------------------------------------------------------------------- MNIST


def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    """Write ``array`` (uint8) in the IDX format: big-endian magic, dimensions, raw bytes."""
    payload = struct.pack(">i", magic) + b"".join(struct.pack(">i", n) for n in array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fabricate_mnist(folder: Path, prefix: str, n: int, seed: int, compress: bool = True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, 2051, compress)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 2049, compress)
    return images, labels


def _undo_mnist_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * D.MNIST_STD[0] + D.MNIST_MEAN[0]


def _check_mnist_items(dataset, images, labels, indices=None):
    indices = range(len(images)) if indices is None else indices
    for position, index in enumerate(indices):
        x, y = dataset[position]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        expected = torch.from_numpy(images[index]).float() / 255.0
        # Tolerance: float32 round trip through Normalize and its inverse.
        assert torch.allclose(_undo_mnist_normalize(x)[0], expected, atol=1e-5)
        assert y == int(labels[index])


def test_mnist_gz_files_directly_in_root(tmp_path):
    train_images, train_labels = _fabricate_mnist(tmp_path, "train", 20, seed=0)
    test_images, test_labels = _fabricate_mnist(tmp_path, "t10k", 12, seed=1)
    train, test = D.mnist_datasets(tmp_path)
    assert len(train) == 20 and len(test) == 12
    _check_mnist_items(train, train_images, train_labels)
    _check_mnist_items(test, test_images, test_labels)
    assert all(p.name.endswith(".gz") for p in tmp_path.iterdir())  # nothing staged next to the data


def test_mnist_torchvision_layout_uncompressed(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    images, labels = _fabricate_mnist(raw, "train", 20, seed=2, compress=False)
    _fabricate_mnist(raw, "t10k", 5, seed=3, compress=False)
    train, test = D.mnist_datasets(tmp_path, train_subset=7, seed=0)
    assert len(train) == 7 and len(test) == 5
    _check_mnist_items(train, images, labels, indices=train.indices)


def test_mnist_test_split_needs_only_t10k(tmp_path):
    images, labels = _fabricate_mnist(tmp_path, "t10k", 20, seed=4)
    train, test = D.mnist_test_split(tmp_path, n_train=15, n_test=5, seed=0)
    assert len(train) == 15 and len(test) == 5
    assert set(train.indices).isdisjoint(test.indices)
    assert set(train.indices) | set(test.indices) == set(range(20))
    _check_mnist_items(train, images, labels, indices=train.indices)
    _check_mnist_items(test, images, labels, indices=test.indices)
    again, _ = D.mnist_test_split(tmp_path, n_train=15, n_test=5, seed=0)
    assert again.indices == train.indices
    with pytest.raises(ValueError):
        D.mnist_test_split(tmp_path, n_train=15, n_test=6)


def test_mnist_missing_files_message(tmp_path):
    _fabricate_mnist(tmp_path, "t10k", 3, seed=5)
    with pytest.raises(FileNotFoundError) as info:
        D.mnist_datasets(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "t10k" not in message
    assert str(tmp_path / "MNIST" / "raw") in message and "download=True" in message


@pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST not present")
def test_shared_mnist_test_split():
    train, test = D.mnist_test_split(SHARED_MNIST, n_train=100, n_test=50)
    assert train.dataset.data.shape == (10000, 28, 28)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and 0 <= y <= 9


# ----------------------------------------------------------------------------- CIFAR
#
# The fabricated batches use torchvision's real reading code. Two notes:
# * The official files are Python 2 pickles whose byte-string keys torchvision decodes with
#   encoding="latin1" into str keys ("data", "labels"); a Python 3 pickle with str keys is what
#   that decoding yields, so it exercises the same code path.
# * torchvision verifies each file against the official md5. The test replaces the class-level
#   md5 tables with the md5 of the fabricated files (monkeypatch, test-only), so torchvision's
#   own integrity check still runs, just against the fabricated files.


def _pickle(path: Path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fabricate_cifar(root: Path, cls, label_key: str, n_classes: int, monkeypatch, n_per_file: int = 4):
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}

    def write(names):
        table = []
        for name in names:
            images = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
            labels = rng.integers(0, n_classes, size=n_per_file).tolist()
            entry = {"data": images, label_key: labels, "batch_label": name}
            if label_key == "fine_labels":
                entry["coarse_labels"] = [label % 20 for label in labels]
            table.append([name, _pickle(folder / name, entry)])
            written[name] = (images, labels)
        return table

    train_list = write([name for name, _ in cls.train_list])
    test_list = write([name for name, _ in cls.test_list])
    meta_key = cls.meta["key"]
    meta_md5 = _pickle(folder / cls.meta["filename"], {meta_key: [f"class{i}" for i in range(n_classes)]})
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    return written


def test_normalisation_constants_are_the_standard_ones():
    # The fabricated-data tests invert Normalize with these constants, so pin their values here.
    assert D.MNIST_MEAN == (0.1307,) and D.MNIST_STD == (0.3081,)
    assert D.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465) and D.CIFAR10_STD == (0.2023, 0.1994, 0.2010)
    assert D.CIFAR100_MEAN == (0.5071, 0.4865, 0.4409) and D.CIFAR100_STD == (0.2673, 0.2564, 0.2762)


def _undo_cifar_normalize(x, mean, std):
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


@pytest.mark.parametrize(
    "name,class_name,label_key,n_classes,mean,std",
    [
        ("cifar10", "CIFAR10", "labels", 10, D.CIFAR10_MEAN, D.CIFAR10_STD),
        ("cifar100", "CIFAR100", "fine_labels", 100, D.CIFAR100_MEAN, D.CIFAR100_STD),
    ],
)
def test_cifar_fabricated(tmp_path, monkeypatch, name, class_name, label_key, n_classes, mean, std):
    import torchvision.datasets as tvd
    from torchvision import transforms

    cls = getattr(tvd, class_name)
    written = _fabricate_cifar(tmp_path, cls, label_key, n_classes, monkeypatch)
    train, test = D.cifar_datasets(tmp_path, name=name, augment=False)
    n_train_files = len(cls.train_list)
    assert len(train) == 4 * n_train_files and len(test) == 4
    assert train.classes[:2] == ["class0", "class1"]

    test_images, test_labels = written[cls.test_list[0][0]]
    for i in range(4):
        x, y = test[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        expected = torch.from_numpy(test_images[i].reshape(3, 32, 32)).float() / 255.0
        assert torch.allclose(_undo_cifar_normalize(x, mean, std), expected, atol=1e-5)
        assert y == test_labels[i]
    last_images, last_labels = written[cls.train_list[-1][0]]
    x, y = train[len(train) - 1]
    expected = torch.from_numpy(last_images[-1].reshape(3, 32, 32)).float() / 255.0
    assert torch.allclose(_undo_cifar_normalize(x, mean, std), expected, atol=1e-5)
    assert y == last_labels[-1]

    # The dataset folder itself is accepted as root; augmentation is on by default.
    augmented, _ = D.cifar_datasets(tmp_path / cls.base_folder, name=name)
    kinds = [type(t) for t in augmented.transform.transforms]
    assert kinds[:2] == [transforms.RandomCrop, transforms.RandomHorizontalFlip]
    assert augmented[0][0].shape == (3, 32, 32)


def test_cifar_corrupted_file_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    _fabricate_cifar(tmp_path, tvd.CIFAR10, "labels", 10, monkeypatch)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"x")
    with pytest.raises(RuntimeError, match="corrupted"):
        D.cifar_datasets(tmp_path)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_files_message(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as info:
        D.cifar_datasets(tmp_path, name=name)
    message = str(info.value)
    assert str(tmp_path / folder) in message and "download=True" in message
    assert ("data_batch_1" in message) if name == "cifar10" else ("train" in message)


def test_cifar_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        D.cifar_datasets(tmp_path, name="svhn")


def test_data_import_is_light():
    # torchvision and scikit-learn are imported only when a loader needs them. Compared with the
    # package import so that whatever the package's __init__ pulls in is not blamed on this module.
    import subprocess
    import sys

    code = (
        "import sys; import intrafusion_viz; heavy = ('torchvision', 'sklearn'); "
        "before = {m for m in heavy if m in sys.modules}; import intrafusion_viz.data; "
        "print(sorted({m for m in heavy if m in sys.modules} - before))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ})
    assert result.stdout.strip() == "[]", result.stderr
