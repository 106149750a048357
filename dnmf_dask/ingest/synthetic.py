"""Synthetic data sets.

:func:`hierarchical_blocks` builds the 87 x 90 three-level hierarchical toy matrix of the Neural
NMF paper (Gao, Haddock, Molitor, Needell, Sadovnik, Will, Zhang, section 3): "Starting with two
large blocks, we overlay increasingly smaller and more intense asymmetric regions (with values
1, 2, and 4) along the diagonal, and finally add a uniform(0, 0.15) noise".  The paper does not
list the block sizes; the layout below is ours (fixed, documented, unequal sizes so that the
regions are asymmetric), with the nesting 2 -> 4 -> 9 that matches the ranks 2, 4, 9 used in
the paper's experiments.
"""

from __future__ import annotations

import numbers

import numpy as np

from dnmf_dask.errors import DNMFTypeError, DNMFValueError

__all__ = [
    "hierarchical_blocks",
    "hierarchical_blocks_layout",
    "FEATURE_BLOCK_SIZES",
    "SAMPLE_BLOCK_SIZES",
    "MID_GROUPS",
    "TOP_GROUPS",
    "LEVEL_VALUES",
]

#: sizes of the nine finest blocks along the feature axis (the paper's 87 rows)
FEATURE_BLOCK_SIZES = (8, 12, 9, 7, 11, 10, 6, 13, 11)
#: sizes of the nine finest blocks along the sample axis (the paper's 90 columns)
SAMPLE_BLOCK_SIZES = (11, 9, 12, 8, 10, 13, 7, 9, 11)
#: the four middle blocks, as groups of consecutive finest blocks
MID_GROUPS = ((0, 1), (2, 3, 4), (5, 6), (7, 8))
#: the two large blocks, as groups of consecutive middle blocks
TOP_GROUPS = ((0, 1), (2, 3))
#: values of the large, middle and finest regions (each overlay replaces the one below)
LEVEL_VALUES = (1.0, 2.0, 4.0)


def _edges(sizes):
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int)


def hierarchical_blocks_layout():
    """The block layout of :func:`hierarchical_blocks` in our orientation.

    Returns
    -------
    dict with, for each level ``"top"`` (2 blocks), ``"mid"`` (4) and ``"fine"`` (9), a list of
    ``(sample_start, sample_stop, feature_start, feature_stop)`` half-open ranges, plus
    ``"fine_of_mid"`` and ``"mid_of_top"`` (the nesting) and ``"values"``.
    """
    fe, se = _edges(FEATURE_BLOCK_SIZES), _edges(SAMPLE_BLOCK_SIZES)
    fine = [(int(se[i]), int(se[i + 1]), int(fe[i]), int(fe[i + 1])) for i in range(9)]
    mid = [(fine[g[0]][0], fine[g[-1]][1], fine[g[0]][2], fine[g[-1]][3]) for g in MID_GROUPS]
    top = [(mid[g[0]][0], mid[g[-1]][1], mid[g[0]][2], mid[g[-1]][3]) for g in TOP_GROUPS]
    return {
        "top": top,
        "mid": mid,
        "fine": fine,
        "fine_of_mid": [list(g) for g in MID_GROUPS],
        "mid_of_top": [list(g) for g in TOP_GROUPS],
        "values": LEVEL_VALUES,
    }


def _rng(random_state):
    if random_state is None or isinstance(random_state, (numbers.Integral, np.random.Generator)):
        if isinstance(random_state, bool):
            raise DNMFTypeError("random_state: expected None, an int or a numpy Generator, found bool")
        if isinstance(random_state, numbers.Integral) and random_state < 0:
            raise DNMFValueError(f"random_state: expected an int >= 0, found {random_state}")
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.RandomState):
        return random_state
    raise DNMFTypeError(
        "random_state: expected None, an int, a numpy Generator or RandomState, "
        f"found {type(random_state).__name__}"
    )


def hierarchical_blocks(random_state=None, noise=0.15):
    """The 87 x 90 three-level hierarchical toy data of the Neural NMF paper.

    Layout, in the paper's orientation (87 features = rows, 90 samples = columns; blocks run
    down the diagonal, consecutive, unequal in size):

    * two large regions of value 1: features 0-46 x samples 0-49 and features 47-86 x
      samples 50-89;
    * inside them four middle regions of value 2 (replacing the 1s): features
      0-19 / 20-46 / 47-62 / 63-86 x samples 0-19 / 20-49 / 50-69 / 70-89;
    * inside those nine finest regions of value 4 (replacing the 2s), with feature sizes
      8, 12, 9, 7, 11, 10, 6, 13, 11 and sample sizes 11, 9, 12, 8, 10, 13, 7, 9, 11
      (grouped 2 + 3 + 2 + 2 into the middle regions, and 2 + 2 middle regions into the
      large ones);
    * zeros elsewhere, then uniform(0, ``noise``) noise added to every entry.

    The noise-free matrix has rank 9 (the finest regions), and coarsens exactly to 4 and 2
    regions, matching the paper's ranks k = 9, 4, 2.  The label of a sample is the index
    (0..8, along the diagonal) of the finest region that contains the sample's maximum entry.

    Parameters
    ----------
    random_state : None, int, numpy Generator or RandomState
        Seed of the noise (the block layout is fixed).
    noise : float, 0 <= noise < 2
        Upper bound of the uniform noise (the paper uses 0.15).  Below 2 the maximum of every
        sample lies in its own finest block, so the label is the sample's finest block.

    Returns
    -------
    X : (90, 87) float64 array, **our orientation**: rows = samples, columns = features
        (the transpose of the paper's matrix).
    y : (90,) int64 array with values in 0..8.
    """
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real):
        raise DNMFTypeError(f"noise: expected a real number >= 0, found {type(noise).__name__}")
    if not (np.isfinite(noise) and 0 <= noise < 2):
        raise DNMFValueError(
            f"noise: expected 0 <= noise < 2 (larger noise can move a sample's maximum out of its "
            f"finest block, leaving its label undefined), found {noise!r}"
        )
    rng = _rng(random_state)
    layout = hierarchical_blocks_layout()
    n_samples, n_features = sum(SAMPLE_BLOCK_SIZES), sum(FEATURE_BLOCK_SIZES)
    X = np.zeros((n_samples, n_features), dtype=np.float64)
    for level, value in zip(("top", "mid", "fine"), LEVEL_VALUES):
        for s0, s1, f0, f1 in layout[level]:
            X[s0:s1, f0:f1] = value
    X += rng.uniform(0.0, float(noise), size=X.shape)
    # label: the finest region holding each sample's maximum entry
    owner = np.full(X.shape, -1, dtype=np.int64)
    for c, (s0, s1, f0, f1) in enumerate(layout["fine"]):
        owner[s0:s1, f0:f1] = c
    y = owner[np.arange(n_samples), np.argmax(X, axis=1)]
    return X, y
