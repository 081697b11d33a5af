"""``lsgm prepare-celeba``: CelebA-HQ-256 from the files the official code uses into the layout our loader reads.

The official code (NVlabs/NVAE and NVlabs/LSGM, ``scripts/convert_tfrecord_to_lmdb.py --dataset celeba``) reads GLOW's
CelebA-HQ tfrecords (https://storage.googleapis.com/glow-demo/data/celeba-tfr.tar, extracted: ``celeba-tfr/``):
``train/train-r08-s-%04d-of-0120.tfrecords`` (120 shards) and ``validation/validation-r08-s-%04d-of-0040.tfrecords``
(40), each record a ``tf.train.Example`` with ``shape`` (int64 [256, 256, 3]), ``data`` (the raw uint8 RGB pixels,
row-major HWC) and ``label``; it writes the pixels, in shard then record order, into ``train.lmdb`` /
``validation.lmdb`` keyed 0, 1, 2, ... (27,000 train, 3,000 validation). This command writes the same images in the
same order as ``<root>/celeba256/{train,validation}/NNNNN.png`` (lossless; the loader sorts by name, so index order),
without TensorFlow: the TFRecord framing and the Example's protobuf fields are read here (:func:`records`,
:func:`parse_example`); every record's length checksum, its shape and its byte count are checked (the data's
CRC32C too where the ``crc32c`` package is installed). Images already written are kept (a rerun resumes).

    lsgm prepare-celeba --tfrecords celeba-tfr --root data [--splits train validation]
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lsgm.data.celeba import CELEBA_FOLDERS, CELEBA_SIZE
from lsgm.datasets_info import EXPECTED_COUNTS

SHARDS = {"train": 120, "validation": 40}
SHARD = "{split}/{split}-r08-s-{index:04d}-of-{total:04d}.tfrecords"
_CRC_TABLE = None


class PrepareError(RuntimeError):
    """A tfrecord that cannot be converted; one line naming the file and the fix."""


# ------------------------------------------------------------------------------------------------ TFRecord framing
def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses; bytewise and slow, so only for the 8-byte length field."""
    global _CRC_TABLE
    if _CRC_TABLE is None:
        table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        _CRC_TABLE = table
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _data_crc():
    try:
        import crc32c  # optional: a fast CRC32C for the payloads
    except ImportError:
        return None
    return crc32c.crc32c


def records(path: Path) -> Iterator[bytes]:
    """The payloads of one TFRecord file: ``uint64 length, uint32 masked-CRC32C(length), data, uint32 masked CRC32C
    (data)``, little-endian."""
    data_crc = _data_crc()
    with open(path, "rb") as fh:
        while True:
            head = fh.read(12)
            if not head:
                return
            if len(head) < 12:
                raise PrepareError(f"{path}: truncated record header; re-extract celeba-tfr.tar")
            length, length_crc = struct.unpack("<QI", head)
            if _masked(_crc32c(head[:8])) != length_crc:
                raise PrepareError(f"{path}: corrupt record length (CRC mismatch); re-extract celeba-tfr.tar")
            payload, tail = fh.read(length), fh.read(4)
            if len(payload) < length or len(tail) < 4:
                raise PrepareError(f"{path}: truncated record; re-extract celeba-tfr.tar")
            if data_crc is not None and _masked(data_crc(payload)) != struct.unpack("<I", tail)[0]:
                raise PrepareError(f"{path}: corrupt record data (CRC mismatch); re-extract celeba-tfr.tar")
            yield payload


def write_records(path: Path, payloads: list[bytes]) -> None:
    """A TFRecord file of ``payloads`` (the miniature shards of tests/test_fetch_data.py)."""
    with open(path, "wb") as fh:
        for payload in payloads:
            length = struct.pack("<Q", len(payload))
            fh.write(length + struct.pack("<I", _masked(_crc32c(length))) + payload
                     + struct.pack("<I", _masked(_crc32c(payload))))


# ------------------------------------------------------------------------------------------------ tf.train.Example
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: varints as ints, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_example(payload: bytes) -> dict[str, list]:
    """A ``tf.train.Example`` as ``{feature: values}`` (bytes_list: bytes; int64_list: ints)."""
    out: dict[str, list] = {}
    for number, _, features in _fields(payload):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features):  # map<string, Feature> entries
            if entry_number != 1:
                continue
            key, feature = None, b""
            for n, _, v in _fields(entry):
                key, feature = (v.decode(), feature) if n == 1 else (key, v if n == 2 else feature)
            values: list = []
            for kind, _, lst in _fields(feature):
                for n, wire, v in _fields(lst):
                    if n != 1:
                        continue
                    if kind == 1:
                        values.append(v)
                    elif kind == 3 and wire == 2:  # packed int64
                        j = 0
                        while j < len(v):
                            x, j = _varint(v, j)
                            values.append(x)
                    elif kind == 3:
                        values.append(v)
            out[key] = values
    return out


def example_bytes(image: np.ndarray, label: int = 0) -> bytes:
    """A ``tf.train.Example`` as GLOW wrote them: ``shape``, ``data`` (raw HWC uint8), ``label`` (for the tests)."""
    def varint(x: int) -> bytes:
        out = bytearray()
        while True:
            b, x = x & 0x7F, x >> 7
            out.append(b | (0x80 if x else 0))
            if not x:
                return bytes(out)

    def ld(number: int, data: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(data)) + data

    def int64s(values) -> bytes:
        return ld(3, ld(1, b"".join(varint(v) for v in values)))

    feats = {"shape": int64s(image.shape), "data": ld(1, ld(1, image.astype(np.uint8).tobytes())),
             "label": int64s([label])}
    entries = b"".join(ld(1, ld(1, k.encode()) + ld(2, v)) for k, v in feats.items())
    return ld(1, entries)


# ------------------------------------------------------------------------------------------------ the conversion
def image_of(payload: bytes, where: str) -> np.ndarray:
    example = parse_example(payload)
    shape, data = example.get("shape", []), example.get("data", [])
    if list(shape) != [CELEBA_SIZE, CELEBA_SIZE, 3] or len(data) != 1 or len(data[0]) != CELEBA_SIZE**2 * 3:
        raise PrepareError(f"{where}: not a CelebA-HQ-256 record (shape {list(shape)}, "
                           f"{len(data[0]) if data else 0} bytes); use GLOW's celeba-tfr r08 shards")
    return np.frombuffer(data[0], dtype=np.uint8).reshape(CELEBA_SIZE, CELEBA_SIZE, 3)


def prepare_split(tfrecords: Path, root: Path, split: str, shards: int | None = None,
                  expected: int | None = None) -> int:
    """Every image of ``split`` as ``root/celeba256/<folder>/NNNNN.png``; returns the count (checked against the
    official one, or ``expected``)."""
    from lsgm.data.file_formats import png_bytes
    from lsgm.io import atomic_write_bytes

    total = shards or SHARDS[split]
    folder = root / "celeba256" / CELEBA_FOLDERS["train" if split == "train" else "test"]
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for index in range(total):
        path = tfrecords / SHARD.format(split=split, index=index, total=total)
        if not path.is_file():
            raise PrepareError(f"missing {path}: extract celeba-tfr.tar (https://storage.googleapis.com/glow-demo/"
                               f"data/celeba-tfr.tar) and pass its celeba-tfr folder as --tfrecords")
        for payload in records(path):
            out = folder / f"{count:05d}.png"
            if not out.exists():
                atomic_write_bytes(out, png_bytes(image_of(payload, f"{path} record {count}")))
            count += 1
    want = expected or EXPECTED_COUNTS["celeba256"]["train" if split == "train" else "test"]
    if count != want:
        raise PrepareError(f"{tfrecords}/{split}: {count} images, expected {want}; the shards are incomplete: "
                           "re-extract celeba-tfr.tar")
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lsgm prepare-celeba", description=__doc__.splitlines()[0])
    p.add_argument("--tfrecords", required=True, help="the extracted celeba-tfr folder (train/, validation/)")
    p.add_argument("--root", default="data", help="the data folder (config.yaml scales.paper.data_root)")
    p.add_argument("--splits", nargs="+", choices=list(SHARDS), default=list(SHARDS))
    args = p.parse_args(argv)
    try:
        for split in args.splits:
            n = prepare_split(Path(args.tfrecords), Path(args.root), split)
            print(f"celeba256 {split}: {n:,} images in {Path(args.root) / 'celeba256'}", flush=True)
    except (PrepareError, OSError) as err:
        print(f"lsgm prepare-celeba: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0
