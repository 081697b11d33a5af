"""`lsgm fetch-data` on the login node (download where the network allows, checksums verified, one line saying what to
do where it does not) and `lsgm prepare-celeba` (GLOW's CelebA-HQ tfrecords -> the folders the loader reads), on local
files: an HTTP server on 127.0.0.1 stands in for the sources, an unreachable port for a node without network."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from lsgm.data import cifar10, omniglot
from lsgm.data import celeba_prepare as prep
from lsgm.data.fetch import main as fetch_main
from lsgm.data.registry import get_dataset

NOWHERE = "http://127.0.0.1:9/"  # the discard port: connection refused, as on a node without network


@pytest.fixture
def server(tmp_path):
    """An HTTP server of the folder ``tmp_path / "www"`` on 127.0.0.1; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            return None

    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_without_network_each_dataset_is_one_line_saying_what_to_fetch_from_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar10, "CIFAR10_URL", NOWHERE + "cifar-10-python.tar.gz")
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", NOWHERE + "chardata.mat")
    monkeypatch.setattr("torchvision.datasets.MNIST.mirrors", [NOWHERE])
    assert fetch_main(["--root", str(tmp_path), "--datasets", "mnist", "cifar10", "omniglot", "celeba256"]) == 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("lsgm fetch-data:")]
    assert len(lines) == 4 and out.strip() == f"0 of 4 datasets ready in {tmp_path} (mnist 70,000, cifar10 60,000, " \
                                              "omniglot 32,415, celeba256 30,000 images expected)"
    mnist, cifar, omni, celeba = lines
    for name in ("train-images-idx3-ubyte.gz (md5 f68b3c2dcbeaaa9fbdd348bbdeb94873)",
                 "t10k-labels-idx1-ubyte.gz (md5 ec29112dd5afa0611ce80d1b7f02629c)", f"put them in {tmp_path}/MNIST/raw"):
        assert name in mnist, mnist
    assert (f"missing cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a); put them in {tmp_path} (from "
            f"{NOWHERE}cifar-10-python.tar.gz) by hand; download failed: URLError") in cifar
    assert f"put them in {tmp_path}/omniglot (from {NOWHERE}chardata.mat) by hand; download failed" in omni
    assert "lsgm prepare-celeba --tfrecords celeba-tfr" in celeba and "glow-demo/data/celeba-tfr.tar" in celeba


def test_a_download_with_the_wrong_checksum_is_refused_and_named(tmp_path, server, monkeypatch, capsys):
    www, url = server
    (www / "cifar-10-python.tar.gz").write_bytes(b"not the CIFAR-10 archive")
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url + "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    assert fetch_main(["--root", str(root), "--datasets", "cifar10"]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("lsgm fetch-data:")]
    assert ("missing cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a)" in line and "download failed: the "
            "downloaded file has md5 9247dc11b4a71413ee9a84a367e609f1, expected c58f30108f718f92721af3b95e74349a" in line)
    assert not (root / "cifar-10-python.tar.gz").exists()  # not kept: a rerun downloads it again
    # a file already there with the wrong checksum: named, with the fix
    (root / "cifar-10-batches-py").mkdir(parents=True)
    for name in cifar10.CIFAR10_MD5:
        (root / "cifar-10-batches-py" / name).write_bytes(b"x")
    assert fetch_main(["--root", str(root), "--datasets", "cifar10"]) == 1
    (err,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("lsgm fetch-data:")]
    assert "corrupt file" in err and "expected c99cafc152244af753f735de768cd75f); delete it and re-fetch it" in err
    assert "expected 40351d587109b95175f43aff81a1287e); delete it and re-fetch it" in err  # both splits, one line


def test_a_download_that_verifies_is_kept_and_reported(tmp_path, server, monkeypatch, capsys):
    """OMNIGLOT's chardata.mat at its official shapes (24,345 + 8,070 images; zeros, 0/1 as the real file), served
    locally: fetched, parsed, counted; a second call only verifies."""
    from scipy.io import savemat

    www, url = server
    savemat(www / "chardata.mat", {"data": np.zeros((784, 24_345), np.uint8),
                                   "testdata": np.ones((784, 8_070), np.uint8)}, do_compression=True)
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", url + "chardata.mat")
    root = tmp_path / "data"
    assert fetch_main(["--root", str(root), "--datasets", "omniglot"]) == 0
    out = capsys.readouterr().out
    assert f"omniglot: ok (train 24,345, test 8,070 images, verified) in {root}" in out
    (www / "chardata.mat").unlink()
    assert fetch_main(["--root", str(root), "--datasets", "omniglot"]) == 0  # already there: not downloaded again


def shards(folder: Path, split: str, images: list[np.ndarray], per_shard: int) -> int:
    groups = [images[i:i + per_shard] for i in range(0, len(images), per_shard)]
    for index, group in enumerate(groups):
        path = folder / prep.SHARD.format(split=split, index=index, total=len(groups))
        path.parent.mkdir(parents=True, exist_ok=True)
        prep.write_records(path, [prep.example_bytes(im, label=0) for im in group])
    return len(groups)


def test_celeba_tfrecords_become_the_folders_the_loader_reads_in_the_official_order(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(5)]
    n = shards(tmp_path / "celeba-tfr", "validation", images, per_shard=2)
    assert prep.prepare_split(tmp_path / "celeba-tfr", tmp_path / "data", "validation", shards=n, expected=5) == 5
    data = get_dataset("celeba256", "test", root=tmp_path / "data", expected_size=5)
    for i, image in enumerate(images):  # the loader's 5-bit reading of exactly these pixels, in record order
        expected = (image.transpose(2, 0, 1) >> 3).astype(np.float32) / 31
        assert np.array_equal(data[i][0].numpy(), expected)


def test_a_damaged_tfrecord_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    shards(tmp_path / "tfr", "train", [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)], per_shard=1)
    path = tmp_path / "tfr" / prep.SHARD.format(split="train", index=0, total=1)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(prep.PrepareError, match="truncated record; re-extract celeba-tfr.tar"):
        prep.prepare_split(tmp_path / "tfr", tmp_path / "data", "train", shards=1, expected=1)
    assert prep.main(["--tfrecords", str(tmp_path / "nothing"), "--root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "train-r08-s-0000-of-0120.tfrecords" in err, err
