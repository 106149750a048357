"""Tests of the synthetic hierarchical toy data of the Neural NMF paper."""

import numpy as np
import pytest

from dnmf_dask.errors import DNMFTypeError, DNMFValueError
from dnmf_dask.ingest.synthetic import hierarchical_blocks, hierarchical_blocks_layout


def test_shape_dtype_and_nonnegativity():
    X, y = hierarchical_blocks(random_state=0)
    assert X.shape == (90, 87)  # samples x features (the paper's 87 x 90, transposed)
    assert X.dtype == np.float64
    assert y.shape == (90,) and y.dtype.kind == "i"
    assert np.all(X >= 0)
    assert X.max() <= 4 + 0.15


def test_nine_classes_all_present_and_equal_to_block_of_sample():
    X, y = hierarchical_blocks(random_state=1)
    assert set(np.unique(y)) == set(range(9))
    layout = hierarchical_blocks_layout()
    for c, (s0, s1, f0, f1) in enumerate(layout["fine"]):
        assert np.all(y[s0:s1] == c)
        # the maximum of every sample of block c lies in block c's features
        assert np.all((np.argmax(X[s0:s1], axis=1) >= f0) & (np.argmax(X[s0:s1], axis=1) < f1))


def test_deterministic_with_seed_and_noise_varies():
    X1, y1 = hierarchical_blocks(random_state=42)
    X2, y2 = hierarchical_blocks(random_state=42)
    X3, _ = hierarchical_blocks(random_state=43)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)
    X4, _ = hierarchical_blocks(random_state=np.random.default_rng(42))
    np.testing.assert_array_equal(X1, X4)


def test_block_values_and_noise_level():
    X0, _ = hierarchical_blocks(random_state=0, noise=0.0)
    assert set(np.unique(X0)) == {0.0, 1.0, 2.0, 4.0}
    layout = hierarchical_blocks_layout()
    # nesting: fine blocks inside mid blocks inside top blocks, all along the diagonal
    for m, fines in enumerate(layout["fine_of_mid"]):
        ms0, ms1, mf0, mf1 = layout["mid"][m]
        for c in fines:
            s0, s1, f0, f1 = layout["fine"][c]
            assert ms0 <= s0 < s1 <= ms1 and mf0 <= f0 < f1 <= mf1
    assert len(layout["top"]) == 2 and len(layout["mid"]) == 4 and len(layout["fine"]) == 9
    # unequal ("asymmetric") sizes
    sizes = {(s1 - s0, f1 - f0) for s0, s1, f0, f1 in layout["fine"]}
    assert len(sizes) > 1
    assert any(s1 - s0 != f1 - f0 for s0, s1, f0, f1 in layout["fine"])
    X, _ = hierarchical_blocks(random_state=0, noise=0.15)
    noise = X - X0
    assert noise.min() >= 0 and noise.max() <= 0.15
    assert abs(noise.mean() - 0.075) < 0.01


def test_hierarchical_low_rank_structure():
    X0, _ = hierarchical_blocks(random_state=0, noise=0.0)
    assert np.linalg.matrix_rank(X0) == 9
    X, _ = hierarchical_blocks(random_state=0)
    s = np.linalg.svd(X, compute_uv=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    assert energy[8] > 0.99  # rank 9 captures almost everything
    assert energy[3] > 0.85  # rank 4 most of it
    assert energy[1] > 0.65  # rank 2 the coarse blocks
    assert energy[8] - energy[7] > 1e-3  # and every one of the 9 components matters


def test_bad_arguments():
    with pytest.raises(DNMFValueError, match="noise"):
        hierarchical_blocks(noise=-0.1)
    with pytest.raises(DNMFValueError, match="noise"):
        hierarchical_blocks(noise=3.0)
    with pytest.raises(DNMFTypeError, match="noise"):
        hierarchical_blocks(noise="0.1")
    with pytest.raises(DNMFTypeError, match="random_state"):
        hierarchical_blocks(random_state="seed")
