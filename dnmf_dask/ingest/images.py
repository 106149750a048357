"""Images → pixels as features (IDX files of MNIST / Fashion-MNIST, or any (n, h, w) array).

IDX (LeCun's format, optionally gzip-compressed): two zero bytes, a type code (0x08 = uint8, ...),
the number of dimensions, then one big-endian int32 per dimension, then the data (big-endian).
Debian's ``dataset-fashion-mnist`` ships ``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DNMFValueError

__all__ = ["read_idx", "images_to_samples", "idx_images", "ImageSet", "FASHION_MNIST_LABELS"]

FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                        "Ankle boot")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSet:
    """X (n, h*w) float32 in [0, 1] (row-major pixels), y (n,) or None, feature_names ``"r<i>c<j>"``,
    image_shape (h, w), label_names, params (provenance)."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: np.ndarray
    image_shape: tuple
    label_names: np.ndarray | None
    params: dict

    def __repr__(self):
        return f"ImageSet({self.X.shape[0]} images of {self.image_shape[0]}x{self.image_shape[1]} pixels)"


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` is decompressed)."""
    p = Path(path)
    if not p.is_file():
        raise DNMFValueError(f"input: expected an IDX file, found nothing at {str(p)!r}")
    raw = (gzip.open if p.suffix == ".gz" else open)(p, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DNMFValueError(f"input: expected an IDX file (magic 00 00 <type> <ndim>), found {raw[:4]!r} in {p.name!r}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    dt = np.dtype(_IDX_TYPES[raw[2]])
    n = int(np.prod(dims)) if ndim else 0
    if len(raw) != 4 + 4 * ndim + n * dt.itemsize:
        raise DNMFValueError(f"input: expected {4 + 4 * ndim + n * dt.itemsize} bytes for an IDX array of shape "
                             f"{tuple(int(d) for d in dims)}, found {len(raw)} in {p.name!r}")
    return np.frombuffer(raw, dtype=dt, count=n, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims)).astype(dt.newbyteorder("="))


def images_to_samples(images, *, scale=None):
    """(n, h, w) images → (n, h*w) float32 rows (row-major), divided by ``scale`` (default: 255 for
    uint8, else the maximum), and the pixel names ``"r<i>c<j>"``."""
    a = np.asarray(images)
    if a.ndim != 3:
        raise DNMFValueError(f"images: expected an array of shape (n, height, width), found shape {a.shape}")
    if a.size and a.min() < 0:
        raise DNMFValueError(f"images: expected nonnegative pixels, found minimum {a.min()}")
    n, h, w = a.shape
    if scale is None:
        scale = 255.0 if a.dtype == np.uint8 else float(a.max() or 1.0)
    X = (a.reshape(n, h * w).astype(np.float32) / np.float32(scale))
    names = np.asarray([f"r{i}c{j}" for i in range(h) for j in range(w)])
    return X, names


def idx_images(images_path, labels_path=None, *, limit=None, label_names=None) -> ImageSet:
    """Images (and labels) from IDX files; ``limit`` keeps the first ``limit`` images.

    ``labels_path`` defaults to the sibling file named with ``labels-idx1`` for ``images-idx3``
    (MNIST naming) when it exists. ``label_names`` default to Fashion-MNIST's when there are 10
    classes and the file name says ``fashion``.
    """
    images_path = Path(images_path)
    imgs = read_idx(images_path)
    if labels_path is None:
        guess = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
        labels_path = guess if guess != images_path and guess.exists() else None
    y = None
    if labels_path is not None:
        y = read_idx(labels_path).astype(np.int64)
        if y.shape != (imgs.shape[0],):
            raise DNMFValueError(f"labels: expected {imgs.shape[0]} labels (one per image), found shape {y.shape}")
    if limit is not None:
        imgs = imgs[: int(limit)]
        y = None if y is None else y[: int(limit)]
    X, names = images_to_samples(imgs)
    if label_names is None and y is not None and "fashion" in str(images_path).lower() and y.max() < 10:
        label_names = FASHION_MNIST_LABELS
    params = {"source": "idx", "images": str(images_path), "labels": None if labels_path is None else str(labels_path),
              "limit": limit, "image_shape": list(imgs.shape[1:])}
    return ImageSet(X=X, y=y, feature_names=names, image_shape=tuple(imgs.shape[1:]),
                    label_names=None if label_names is None else np.asarray(label_names), params=params)
