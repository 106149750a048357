"""IDX image ingestion on generated files: header parsing, pixels as features, labels, CLI."""

import gzip
import struct

import numpy as np
import pytest

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.ingest.images import idx_images, images_to_samples, read_idx


def _write_idx(path, arr, code=0x08, gz=False):
    arr = np.asarray(arr)
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    data = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_read_idx_round_trip(tmp_path, rng):
    imgs = rng.integers(0, 256, (7, 4, 3)).astype(np.uint8)
    _write_idx(tmp_path / "a-images-idx3-ubyte.gz", imgs, gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-images-idx3-ubyte.gz"), imgs)
    f = rng.random((2, 5)).astype(np.float32)
    _write_idx(tmp_path / "f.idx", f, code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), f)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DNMFValueError, match="input: expected an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(open(tmp_path / "f.idx", "rb").read()[:-3])
    with pytest.raises(DNMFValueError, match="bytes"):
        read_idx(tmp_path / "short.idx")


def test_pixels_as_features(tmp_path, rng):
    imgs = rng.integers(0, 256, (6, 2, 3)).astype(np.uint8)
    X, names = images_to_samples(imgs)
    assert X.shape == (6, 6) and X.dtype == np.float32 and names[4] == "r1c1"
    np.testing.assert_allclose(X[2, 4], imgs[2, 1, 1] / 255.0, rtol=1e-6)
    labels = np.arange(6) % 3
    _write_idx(tmp_path / "fashion-images-idx3-ubyte", imgs)
    _write_idx(tmp_path / "fashion-labels-idx1-ubyte", labels.astype(np.uint8))
    im = idx_images(tmp_path / "fashion-images-idx3-ubyte", limit=4)  # labels found beside the images
    assert im.X.shape == (4, 6) and im.y.tolist() == [0, 1, 2, 0] and im.label_names[0] == "T-shirt/top"
    out = tmp_path / "img.zarr"
    assert main(["ingest", "images", str(out), "--input", str(tmp_path / "fashion-images-idx3-ubyte"),
                 "--label-fraction", "0.5"]) == 0
    c = dd.open_corpus(out)
    assert c.shape == (6, 6) and np.array_equal(c.y_true, labels) and list(c.feature_names[:2]) == ["r0c0", "r0c1"]
    assert main(["ingest", "images", str(tmp_path / "x.zarr"), "--input", str(tmp_path / "missing")]) == 2
