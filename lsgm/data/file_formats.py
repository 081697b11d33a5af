"""The official file formats a miniature is written in, as bytes: CIFAR-10's Python 2 pickles (:func:`py2_pickle`,
:func:`cifar10_batch`), MNIST's IDX (:func:`idx_bytes`), OMNIGLOT's MAT v5 (:func:`mat_bytes`) and CelebA-HQ's PNG
(:func:`png_bytes`); the same arguments give the same bytes. :mod:`lsgm.data.miniature` decides what to write.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np


class Py2Str(bytes):
    """A Python 2 ``str``: pickled as (SHORT_)BINSTRING, which Python 3 decodes with the loader's ``encoding``."""


class _Py2Global:
    """A global named as Python 2 numpy named it (``numpy.core.multiarray._reconstruct``), written verbatim."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        self.__name__ = name  # pickle's save_reduce reads it

    def __call__(self, *args):  # pickle requires the reduce function to be callable; it is never called
        raise TypeError("a pickling marker")


_RECONSTRUCT = _Py2Global("numpy.core.multiarray", "_reconstruct")


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickles as Python 2's cPickle wrote the CIFAR-10 batches: ``Py2Str`` as Python 2 strings and
    numpy arrays reduced as Python 2 numpy did (``_reconstruct``, a ``'b'`` string, the raw bytes as a string).
    The pure-Python pickler is used because only it lets a type's saver be replaced."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: Py2Str) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    def save_py2global(self, obj: _Py2Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str
    dispatch[_Py2Global] = save_py2global

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            raw = np.ascontiguousarray(obj)
            return _RECONSTRUCT, (np.ndarray, (0,), Py2Str(b"b")), (1, raw.shape, raw.dtype, False,
                                                                     Py2Str(raw.tobytes()))
        if isinstance(obj, np.dtype):
            if obj != np.uint8:
                raise TypeError(f"only uint8 arrays are written, got {obj}")
            return np.dtype, (Py2Str(b"u1"), False, True), (3, Py2Str(b"|"), None, None, None, -1, -1, 0)
        return NotImplemented


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar10_batch(label: str, labels: np.ndarray, images: np.ndarray, filenames: list[str]) -> bytes:
    """One CIFAR-10 batch: ``images`` uint8 ``[n, 32, 32, 3]`` stored as ``data`` ``[n, 3072]`` channel-major."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))  # [n, 3072]: R, G, B planes
    return py2_pickle({Py2Str(b"batch_label"): Py2Str(label.encode()),
                       Py2Str(b"labels"): [int(v) for v in labels],
                       Py2Str(b"data"): data,
                       Py2Str(b"filenames"): [Py2Str(f.encode()) for f in filenames]})


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX ubyte file: big-endian int32 magic, then each dimension's size, then the bytes (row-major)."""
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()


def mat_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A MAT v5 file of ``arrays`` (scipy.io.savemat) whose header text is fixed instead of the creation time."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, arrays)
    data = bytearray(buffer.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: lsgm make-data (miniature)".ljust(116)
    return bytes(data)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
