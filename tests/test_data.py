"""Datasets: the offline digits loaders, and every paper-scale loader on small files in the real formats.

The paper-scale tests write tiny files in the official formats (IDX, CIFAR pickles and archive, a
chardata.mat, a CelebA image folder) and load them through ``get_dataset``, the code path used on the
real data. The official checksums (in the dataset modules of ``lsgm.data``) and image counts
(``lsgm.datasets_info``) are constant tables; a test replaces them (``monkeypatch``) by the values of its own
small files, so the real verification code runs.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, MNIST

from lsgm import data
from lsgm.data import DatasetError, celeba, cifar10, dataset_info, digits, get_dataset, md5sum, mnist, omniglot

# --------------------------------------------------------------------------------------------------
# dataset_info and checksum tables
# --------------------------------------------------------------------------------------------------


def test_dataset_info_table():
    assert dataset_info("mnist").eval_dims == 784 and dataset_info("omniglot").eval_dims == 784
    assert dataset_info("cifar10").eval_dims == 3072 and dataset_info("cifar10").levels == 256
    assert dataset_info("celeba256").levels == 32 and dataset_info("celeba256").image_size == 256
    assert dataset_info("digits").levels == 17 and dataset_info("digits").unit == "bpd"
    assert dataset_info("digits_binary").binary and dataset_info("digits_binary").unit == "nats"
    with pytest.raises(DatasetError, match="unknown dataset"):
        dataset_info("imagenet")


def test_every_dataset_has_exactly_one_loader():
    assert set(data.LOADERS) == set(data.DATASETS)


def test_checksums_equal_torchvision_official_values():
    assert mnist.MNIST_MD5 == dict(MNIST.resources)
    assert cifar10.CIFAR10_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list)
    assert cifar10.CIFAR10_ARCHIVE_MD5 == CIFAR10.tgz_md5 and cifar10.CIFAR10_URL == CIFAR10.url


def test_paper_dataset_needs_root():
    with pytest.raises(DatasetError, match="root="):
        get_dataset("mnist", "train")


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


def test_digits_sizes_values_and_levels():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(train), len(test)) == (1497, 300)
    x, y = _stack(train)
    assert x.shape == (1497, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    levels = x * 16
    assert torch.equal(levels, levels.round()) and len(levels.unique()) == 17
    assert torch.equal(_stack(train)[0], x)  # the continuous variant is deterministic
    assert set(y.tolist()) == set(range(10))


def test_digits_split_fixed_disjoint_and_stratified():
    from sklearn.datasets import load_digits

    targets = load_digits().target
    train = digits.digits_split_indices(targets, "train")
    test = digits.digits_split_indices(targets, "test")
    assert np.array_equal(test, digits.digits_split_indices(targets, "test"))
    assert not set(train) & set(test) and len(train) + len(test) == 1797
    assert np.bincount(targets[test]).tolist() == [30] * 10
    x1, y1 = _stack(get_dataset("digits", "test"))
    x2, y2 = _stack(get_dataset("digits", "test"))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_digits_binary_dynamic_and_reproducible():
    dataset = get_dataset("digits_binary", "train")
    torch.manual_seed(0)
    first, labels = _stack(dataset)
    second, _ = _stack(dataset)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # drawn anew on every access
    torch.manual_seed(0)
    assert torch.equal(_stack(dataset)[0], first)
    state = torch.get_rng_state()  # resumable by saving the torch RNG state
    third = _stack(dataset)[0]
    torch.set_rng_state(state)
    assert torch.equal(_stack(dataset)[0], third)
    continuous, labels_c = _stack(get_dataset("digits", "train"))
    assert torch.equal(labels, labels_c)
    assert torch.all(first[continuous == 0] == 0) and torch.all(first[continuous == 1] == 1)


def test_digits_binary_reproducible_with_loader_workers():
    dataset = get_dataset("digits_binary", "test")

    def epoch() -> torch.Tensor:
        loader = torch.utils.data.DataLoader(dataset, batch_size=100, num_workers=2)
        return torch.cat([x for x, _ in loader])

    torch.manual_seed(1)
    first = epoch()
    torch.manual_seed(1)
    assert torch.equal(epoch(), first)


# --------------------------------------------------------------------------------------------------
# MNIST (IDX)
# --------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX (ubyte) file: magic 0x0000 08 <ndim>, big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">i", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.choice([0, 255], size=(n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write_mnist(root, counts, monkeypatch, gz=False):
    """Write the 4 IDX files (optionally gzipped) and register their md5s/counts; returns the arrays."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for seed, (split, (images_name, labels_name)) in enumerate(mnist.MNIST_FILES.items()):
        images, labels = _mnist_arrays(counts[split], seed)
        arrays[split] = (images, labels)
        for name, array in ((images_name, images), (labels_name, labels)):
            content = _idx_bytes(array)
            path = raw / (f"{name}.gz" if gz else name)
            path.write_bytes(gzip.compress(content) if gz else content)
            if gz:
                monkeypatch.setitem(mnist.MNIST_MD5, path.name, md5sum(path))
    monkeypatch.setitem(data.EXPECTED_COUNTS, "mnist", counts)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_padded_and_binarized(tmp_path, monkeypatch, gz):
    arrays = _write_mnist(tmp_path, {"train": 5, "test": 3}, monkeypatch, gz=gz)
    for split in ("train", "test"):
        dataset = get_dataset("mnist", split, root=tmp_path)
        x, y = _stack(dataset)
        images, labels = arrays[split]
        assert x.shape == (len(images), 1, 32, 32) and x.dtype == torch.float32
        expected = torch.from_numpy(images / 255.0).float()  # pixels are 0 or 255: Bernoulli is exact
        assert torch.equal(x[:, 0, 2:-2, 2:-2], expected) and x[:, :, :2].sum() == 0
        assert y.tolist() == labels.tolist()
    assert (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()  # extracted from .gz


def test_mnist_binarizes_grey_pixels_dynamically(tmp_path, monkeypatch):
    _write_mnist(tmp_path, {"train": 2, "test": 2}, monkeypatch)
    grey = np.full((2, 28, 28), 128, np.uint8)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(grey))
    dataset = get_dataset("mnist", "test", root=tmp_path)
    first, second = dataset[0][0], dataset[0][0]
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(DatasetError) as err:
        get_dataset("mnist", "train", root=tmp_path)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "download=True" in message
    assert "\n" not in message


def test_mnist_download_failure_is_dataset_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got: no network")

    monkeypatch.setattr(mnist, "MNIST", offline)
    with pytest.raises(DatasetError, match="download failed.*no network") as err:
        get_dataset("mnist", "train", root=tmp_path, download=True)
    assert str(tmp_path / "MNIST" / "raw") in str(err.value) and "\n" not in str(err.value)


def test_mnist_truncated_idx_file(tmp_path, monkeypatch):
    _write_mnist(tmp_path, {"train": 5, "test": 3}, monkeypatch)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="corrupt file .*train-images-idx3-ubyte.*delete it"):
        get_dataset("mnist", "train", root=tmp_path)


def test_mnist_gz_checksum_mismatch(tmp_path, monkeypatch):
    _write_mnist(tmp_path, {"train": 5, "test": 3}, monkeypatch, gz=True)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DatasetError, match="corrupt file .*t10k-labels-idx1-ubyte.gz.*md5"):
        get_dataset("mnist", "test", root=tmp_path)


def test_mnist_wrong_count_rejected(tmp_path, monkeypatch):
    _write_mnist(tmp_path, {"train": 5, "test": 3}, monkeypatch)
    monkeypatch.setitem(data.EXPECTED_COUNTS, "mnist", {"train": 60_000, "test": 10_000})
    with pytest.raises(DatasetError, match="has 5 images, expected 60000"):
        get_dataset("mnist", "train", root=tmp_path)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles)
# --------------------------------------------------------------------------------------------------


def _cifar_batches(counts) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    names = cifar10.CIFAR10_FILES["train"] + cifar10.CIFAR10_FILES["test"]
    sizes = [counts["train"] // 5] * 5 + [counts["test"]]
    return {name: {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   "labels": rng.integers(0, 10, n).tolist()} for name, n in zip(names, sizes)}


def _write_cifar(root, monkeypatch, counts=None, register=True):
    """Write cifar-10-batches-py (5 train batches, test batch, meta); register md5s and counts."""
    counts = counts or {"train": 10, "test": 3}
    folder = root / cifar10.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    batches = _cifar_batches(counts)
    for name, entry in batches.items():
        (folder / name).write_bytes(pickle.dumps(entry))
        if register:
            monkeypatch.setitem(cifar10.CIFAR10_MD5, name, md5sum(folder / name))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    monkeypatch.setitem(data.EXPECTED_COUNTS, "cifar10", counts)
    return batches


def test_cifar10_pickles_and_flips(tmp_path, monkeypatch):
    batches = _write_cifar(tmp_path, monkeypatch)
    test = get_dataset("cifar10", "test", root=tmp_path)
    x, y = _stack(test)
    expected = torch.from_numpy(batches["test_batch"]["data"].reshape(-1, 3, 32, 32)).float() / 255
    assert x.shape == (3, 3, 32, 32) and torch.equal(x, expected)  # no flips on the test split
    assert y.tolist() == batches["test_batch"]["labels"]
    train = get_dataset("cifar10", "train", root=tmp_path)
    assert len(train) == 10
    first = torch.from_numpy(batches["data_batch_1"]["data"][0].reshape(3, 32, 32)).float() / 255
    torch.manual_seed(0)
    seen = [train[0][0] for _ in range(20)]
    assert any(torch.equal(s, first) for s in seen) and any(torch.equal(s, first.flip(-1)) for s in seen)
    plain = get_dataset("cifar10", "train", root=tmp_path, augment=False)
    assert all(torch.equal(plain[0][0], first) for _ in range(5))


def test_cifar10_from_verified_archive(tmp_path, monkeypatch):
    source = tmp_path / "source"
    batches = _write_cifar(source, monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / cifar10.CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / cifar10.CIFAR10_FOLDER, arcname=cifar10.CIFAR10_FOLDER)
    monkeypatch.setattr(cifar10, "CIFAR10_ARCHIVE_MD5", md5sum(archive))
    x, y = _stack(get_dataset("cifar10", "test", root=root))
    assert y.tolist() == batches["test_batch"]["labels"] and x.shape == (3, 3, 32, 32)


def test_cifar10_archive_checksum_mismatch(tmp_path):
    (tmp_path / cifar10.CIFAR10_ARCHIVE).write_bytes(b"not an archive")
    official = cifar10.CIFAR10_ARCHIVE_MD5
    with pytest.raises(DatasetError, match=f"corrupt file .*cifar-10-python.tar.gz.*{official}"):
        get_dataset("cifar10", "train", root=tmp_path)


def test_cifar10_missing_files_message(tmp_path):
    with pytest.raises(DatasetError) as err:
        get_dataset("cifar10", "test", root=tmp_path)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and "c58f30108f718f92721af3b95e74349a" in message
    assert str(tmp_path) in message and "download=True" in message and "\n" not in message


def test_cifar10_unofficial_batch_fails_checksum(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch, register=False)  # the official md5 table stays in place
    with pytest.raises(DatasetError, match="corrupt file .*test_batch.*40351d587109b95175f43aff81a1287e"):
        get_dataset("cifar10", "test", root=tmp_path)


def test_cifar10_truncated_pickle(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch)
    path = tmp_path / cifar10.CIFAR10_FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="corrupt file .*test_batch.*md5"):
        get_dataset("cifar10", "test", root=tmp_path)
    monkeypatch.setitem(cifar10.CIFAR10_MD5, "test_batch", md5sum(path))  # matching checksum: parse must fail
    with pytest.raises(DatasetError, match="corrupt file .*test_batch.*delete it"):
        get_dataset("cifar10", "test", root=tmp_path)


# --------------------------------------------------------------------------------------------------
# OMNIGLOT (chardata.mat)
# --------------------------------------------------------------------------------------------------


def _chardata(counts, seed=2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 2, (784, counts["train"])).astype(np.float64),
            "testdata": rng.integers(0, 2, (784, counts["test"])).astype(np.float64)}


def _write_chardata(root, monkeypatch, counts=None):
    counts = counts or {"train": 6, "test": 4}
    arrays = _chardata(counts)
    (root / "omniglot").mkdir(parents=True)
    scipy.io.savemat(root / "omniglot" / "chardata.mat", arrays)
    monkeypatch.setitem(data.EXPECTED_COUNTS, "omniglot", counts)
    return arrays


def test_omniglot_chardata_official_reshape(tmp_path, monkeypatch):
    arrays = _write_chardata(tmp_path, monkeypatch)
    for split, key in (("train", "data"), ("test", "testdata")):
        x, y = _stack(get_dataset("omniglot", split, root=tmp_path))
        n = arrays[key].shape[1]
        assert x.shape == (n, 1, 32, 32) and set(y.tolist()) == {-1}
        # official: 255 * reshape(28, 28, -1).transpose(2, 1, 0), i.e. each column read column-major
        expected = np.stack([arrays[key][:, i].reshape(28, 28).T for i in range(n)])
        assert torch.equal(x[:, 0, 2:-2, 2:-2], torch.from_numpy(expected).float())
        assert x[:, :, :, :2].sum() == 0


def test_omniglot_missing_and_truncated(tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as err:
        get_dataset("omniglot", "train", root=tmp_path)
    assert "chardata.mat" in str(err.value) and str(tmp_path / "omniglot") in str(err.value)
    assert "download=True" in str(err.value)
    _write_chardata(tmp_path, monkeypatch)
    path = tmp_path / "omniglot" / "chardata.mat"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="corrupt file .*chardata.mat.*delete it"):
        get_dataset("omniglot", "train", root=tmp_path)


def test_omniglot_wrong_shapes(tmp_path, monkeypatch):
    _write_chardata(tmp_path, monkeypatch)
    wrong = {"data": np.zeros((100, 3)), "testdata": np.zeros((100, 3))}
    scipy.io.savemat(tmp_path / "omniglot" / "chardata.mat", wrong)
    with pytest.raises(DatasetError, match="784 x N"):
        get_dataset("omniglot", "test", root=tmp_path)
    monkeypatch.setitem(data.EXPECTED_COUNTS, "omniglot", {"train": 24_345, "test": 8_070})
    scipy.io.savemat(tmp_path / "omniglot" / "chardata.mat", _chardata({"train": 6, "test": 4}))
    with pytest.raises(DatasetError, match="has 4 images, expected 8070"):
        get_dataset("omniglot", "test", root=tmp_path)


def test_omniglot_fetch_verified(tmp_path, monkeypatch):
    counts = {"train": 3, "test": 2}
    monkeypatch.setitem(data.EXPECTED_COUNTS, "omniglot", counts)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, _chardata(counts))
    monkeypatch.setattr(omniglot.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(buffer.getvalue()))
    assert len(get_dataset("omniglot", "train", root=tmp_path / "ok", download=True)) == 3
    monkeypatch.setattr(omniglot.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>rate limited"))
    with pytest.raises(DatasetError, match="corrupt file"):
        get_dataset("omniglot", "train", root=tmp_path / "bad", download=True)
    assert not list((tmp_path / "bad" / "omniglot").iterdir())  # nothing unverified is kept

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(omniglot.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match="download failed.*no network"):
        get_dataset("omniglot", "test", root=tmp_path / "offline", download=True)


# --------------------------------------------------------------------------------------------------
# CelebA-HQ-256 (image folder)
# --------------------------------------------------------------------------------------------------


def _write_celeba(root, monkeypatch, counts=None) -> dict[str, list[np.ndarray]]:
    counts = counts or {"train": 3, "test": 2}
    rng = np.random.default_rng(3)
    images = {}
    for split, folder in celeba.CELEBA_FOLDERS.items():
        (root / "celeba256" / folder).mkdir(parents=True)
        images[split] = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(counts[split])]
        for i, image in enumerate(images[split]):
            Image.fromarray(image).save(root / "celeba256" / folder / f"{i:05d}.png")
    monkeypatch.setitem(data.EXPECTED_COUNTS, "celeba256", counts)
    return images


def test_celeba_folder_5bit_and_flips(tmp_path, monkeypatch):
    images = _write_celeba(tmp_path, monkeypatch)
    test = get_dataset("celeba256", "test", root=tmp_path)
    x, y = _stack(test)
    assert x.shape == (2, 3, 256, 256) and set(y.tolist()) == {-1}
    official = np.floor(images["test"][1].astype(np.float64) / 255 * 255 / 8) / 31  # floor(x*255/8)/31
    assert np.allclose(x[1].numpy(), official.transpose(2, 0, 1), atol=1e-6)
    assert len((x * 31).round().unique()) == 32
    train = get_dataset("celeba256", "train", root=tmp_path)
    first = torch.from_numpy(images["train"][0].transpose(2, 0, 1) // 8).float() / 31
    torch.manual_seed(0)
    seen = [train[0][0] for _ in range(20)]
    assert len(train) == 3
    assert any(torch.equal(s, first) for s in seen) and any(torch.equal(s, first.flip(-1)) for s in seen)


def test_celeba_missing_and_corrupt(tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as err:
        get_dataset("celeba256", "train", root=tmp_path)
    assert str(tmp_path / "celeba256" / "train") in str(err.value) and "\n" not in str(err.value)
    _write_celeba(tmp_path, monkeypatch)
    (tmp_path / "celeba256" / "validation" / "00001.png").write_bytes(b"\x89PNG garbage")
    dataset = get_dataset("celeba256", "test", root=tmp_path)
    with pytest.raises(DatasetError, match="corrupt file .*00001.png"):
        dataset[1]
    monkeypatch.setitem(data.EXPECTED_COUNTS, "celeba256", {"train": 27_000, "test": 3_000})
    with pytest.raises(DatasetError, match="expected 27000"):
        get_dataset("celeba256", "train", root=tmp_path)


def test_digits_reader_equals_sklearn_load_digits():
    """The sklearn-free reader returns exactly ``sklearn.datasets.load_digits`` (images and targets)."""
    from sklearn.datasets import load_digits

    reference = load_digits()
    images, targets = digits.read_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(targets, reference.target)
