import os

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import dnmf_dask as dd
from dnmf_dask.errors import DNMFValueError, StoreError
from dnmf_dask.store.corpus import row_blocks


def _groups(n, rng):
    sizes = rng.integers(1, 9, size=n)
    g = np.repeat(np.arange(n), sizes)
    return g


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_groups", [False, True])
def test_round_trip(tmp_path, rng, sparse, dtype, with_groups):
    groups = _groups(40, rng) if with_groups else None
    n = len(groups) if with_groups else 150
    Xd = rng.random((n, 17)).astype(dtype)
    Xd[Xd < 0.6] = 0
    X = sp.csc_matrix(Xd) if sparse else Xd  # any sparse format is accepted
    y = rng.integers(-1, 3, size=n)
    names = np.array([f"w{i}" for i in range(17)])
    c = dd.write_corpus(tmp_path / "c.zarr", X, y=y, groups=groups, feature_names=names, chunk_rows=23,
                        label_names=["a", "b", "c"], attrs={"source": "test"})
    c2 = dd.open_corpus(tmp_path / "c.zarr")
    for corpus in (c, c2):
        assert corpus.X.shape == (n, 17) and corpus.X.dtype == dtype
        blocks = [corpus.X.blocks[i].compute() for i in range(corpus.X.numblocks[0])]
        assert all(sp.issparse(b) for b in blocks) == sparse
        back = np.vstack([b.toarray() if sp.issparse(b) else b for b in blocks])
        np.testing.assert_array_equal(back, Xd)
        np.testing.assert_array_equal(corpus.y, y)
        np.testing.assert_array_equal(corpus.feature_names, names)
        assert list(corpus.label_names) == ["a", "b", "c"]
        assert corpus.attrs["provenance"] == {"source": "test"}
        if with_groups:
            off = corpus.row_offsets
            g = corpus.groups
            # no block boundary inside a group
            assert np.all(g[off[1:-1]] != g[off[1:-1] - 1])
            assert len(np.unique(g)) == 40


def test_dask_input_and_sparse_dask(tmp_path, rng):
    Xd = rng.random((100, 8))
    c = dd.write_corpus(tmp_path / "a.zarr", da.from_array(Xd, chunks=(30, 4)), chunk_rows=25)
    np.testing.assert_allclose(c.X.compute(), Xd)
    assert c.X.numblocks[0] == 4
    Xs = sp.random(60, 9, density=0.2, format="csr", random_state=1)
    parts = [da.from_delayed(dask.delayed(Xs[i:i + 20]), shape=(20, 9), dtype=Xs.dtype, meta=sp.csr_matrix((0, 0))) for i in range(0, 60, 20)]
    c2 = dd.write_corpus(tmp_path / "b.zarr", da.concatenate(parts), chunk_rows=15)
    blocks = [c2.X.blocks[i].compute() for i in range(c2.X.numblocks[0])]
    assert all(sp.issparse(b) for b in blocks)
    np.testing.assert_allclose(sp.vstack(blocks).toarray(), Xs.toarray())


def test_row_blocks_never_split_groups(rng):
    for _ in range(50):
        g = _groups(int(rng.integers(1, 30)), rng)
        off = row_blocks(len(g), int(rng.integers(1, 20)), g)
        assert off[0] == 0 and off[-1] == len(g) and np.all(np.diff(off) > 0)
        assert np.all(g[off[1:-1]] != g[off[1:-1] - 1])


def test_interrupted_write_leaves_nothing(tmp_path, rng):
    Xd = rng.random((90, 5))

    def boom(block):
        raise RuntimeError("disk went away")

    bad = da.concatenate([da.from_array(Xd[:45], chunks=(45, 5)), da.from_array(Xd[45:], chunks=(45, 5)).map_blocks(boom, dtype=float)])
    with pytest.raises(RuntimeError, match="disk went away"):
        dd.write_corpus(tmp_path / "x.zarr", bad, chunk_rows=45)
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_store(tmp_path, rng):
    Xd = rng.random((40, 5))
    dd.write_corpus(tmp_path / "x.zarr", Xd, chunk_rows=10)
    bad = da.from_array(rng.random((40, 5)), chunks=(20, 5)).map_blocks(lambda b: 1 / 0, dtype=float)
    with pytest.raises(ZeroDivisionError):
        dd.write_corpus(tmp_path / "x.zarr", bad, chunk_rows=20, overwrite=True)
    np.testing.assert_array_equal(dd.open_corpus(tmp_path / "x.zarr").X.compute(), Xd)
    assert sorted(os.listdir(tmp_path)) == ["x.zarr"]
    with pytest.raises(StoreError, match="existing"):
        dd.write_corpus(tmp_path / "x.zarr", Xd)
    X2 = rng.random((40, 5))
    dd.write_corpus(tmp_path / "x.zarr", X2, overwrite=True)
    np.testing.assert_array_equal(dd.open_corpus(tmp_path / "x.zarr").X.compute(), X2)
    assert sorted(os.listdir(tmp_path)) == ["x.zarr"]


def test_open_errors(tmp_path, rng):
    with pytest.raises(StoreError, match="nothing at"):
        dd.open_corpus(tmp_path / "missing.zarr")
    dd.write_corpus(tmp_path / "c.zarr", rng.random((10, 3)), chunk_rows=5)
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r+")
    g.attrs["format_version"] = 99
    with pytest.raises(StoreError, match="format_version"):
        dd.open_corpus(tmp_path / "c.zarr")


def test_write_validation(tmp_path, rng):
    with pytest.raises(DNMFValueError, match="groups.*contiguous"):
        dd.write_corpus(tmp_path / "g.zarr", rng.random((4, 2)), groups=[0, 1, 0, 1])
    with pytest.raises(DNMFValueError, match="y: expected shape"):
        dd.write_corpus(tmp_path / "g.zarr", rng.random((4, 2)), y=[0, 1])
    with pytest.raises(DNMFValueError, match="feature_names"):
        dd.write_corpus(tmp_path / "g.zarr", rng.random((4, 2)), feature_names=["a"])
    assert not (tmp_path / "g.zarr").exists()


def _codec_names(array):
    return [type(c).__name__ for c in array.metadata.codecs]


@pytest.mark.parametrize("sparse", [True, False])
def test_blocks_are_written_with_blosc_zstd_and_old_codecs_still_read(tmp_path, rng, sparse, monkeypatch):
    from dnmf_dask.store import corpus as corpus_mod

    X = rng.poisson(1.0, (300, 40)).astype(np.float32)
    if sparse:
        X = sp.csr_matrix(X)
    else:
        X[rng.random(X.shape) < 0.05] = np.nan  # missing entries survive the shuffle + zstd round trip
    dd.write_corpus(tmp_path / "new.zarr", X, chunk_rows=100)
    g = zarr.open_group(tmp_path / "new.zarr", mode="r")
    arrays = [g["X"]["0"][k] for k in ("data", "indices", "indptr")] if sparse else [g["X"]["0"]]
    for a in arrays:
        assert "BloscCodec" in _codec_names(a), _codec_names(a)
        (blosc,) = [c for c in a.metadata.codecs if type(c).__name__ == "BloscCodec"]
        assert blosc.cname.value == "zstd" and blosc.shuffle.value == "shuffle"
        assert _codec_names(a)[-1] == "Crc32cCodec"  # a damaged chunk cannot decode into wrong values
    # a store written before the codec change (zarr's default codecs) reads the same
    monkeypatch.setattr(corpus_mod, "block_compressors", lambda: "auto")
    dd.write_corpus(tmp_path / "old.zarr", X, chunk_rows=100)
    old = zarr.open_group(tmp_path / "old.zarr", mode="r")["X"]["0"]
    assert "BloscCodec" not in _codec_names(old["data"] if sparse else old)
    for path in ("new.zarr", "old.zarr"):
        got = dd.open_corpus(tmp_path / path).X.compute()
        got = got.toarray() if sp.issparse(got) else got
        want = X.toarray() if sparse else X
        np.testing.assert_array_equal(got, want)


def test_an_altered_chunk_fails_its_read(tmp_path, rng):
    """One flipped byte in a stored chunk (not only a truncated one) is a StoreError naming the
    block, not wrong values: the blocks carry a CRC32C checksum."""
    X = rng.random((12, 3))
    dd.write_corpus(tmp_path / "c.zarr", X, chunk_rows=6)
    chunks = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "c.zarr" / "X" / "1") for f in fs if f != "zarr.json"]
    with open(chunks[0], "r+b") as fh:
        fh.seek(20)
        b = fh.read(1)
        fh.seek(20)
        fh.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(StoreError, match="block 1 cannot be read"):
        dd.open_corpus(tmp_path / "c.zarr").X.compute(scheduler="synchronous")


def test_append_to_a_store_written_with_the_old_codec(tmp_path, rng, monkeypatch):
    """A store from before the Blosc codec takes appended blocks (written with the new codec)
    and reads back whole: each block's arrays carry their own codecs."""
    from dnmf_dask.store import corpus as corpus_mod

    X1 = sp.csr_matrix(rng.poisson(1.0, (200, 30)).astype(np.float32))
    X2 = sp.csr_matrix(rng.poisson(1.0, (100, 30)).astype(np.float32))
    with monkeypatch.context() as m:
        m.setattr(corpus_mod, "block_compressors", lambda: "auto")
        dd.write_corpus(tmp_path / "c.zarr", X1, chunk_rows=100)
    corpus_mod.append_corpus(tmp_path / "c.zarr", X2, chunk_rows=100)
    g = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert "BloscCodec" not in _codec_names(g["X"]["0"]["data"]) and "BloscCodec" in _codec_names(g["X"]["2"]["data"])
    got = dd.open_corpus(tmp_path / "c.zarr").X.compute()
    np.testing.assert_array_equal(got.toarray(), sp.vstack([X1, X2]).toarray())
