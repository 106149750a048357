"""Hiding labels for semi-supervised runs (scikit-learn convention: ``-1`` = unlabeled).

The deep NMF paper (§4.1, §4.3) "randomly selected 1% of the data from each of the classes to
label as known". :func:`mask_labels` does that: per class, a seeded random ``fraction`` of the
labeled units keeps its label (rounded, at least one per class), the rest become ``-1``.

*Units.* Without ``by_group`` the units are samples (paragraphs, frames). With ``by_group``
(the ``groups`` vector) the units are documents/clips: a ``fraction`` of the **documents** of
each class is chosen and all samples of a chosen document keep their label, so a document is
never half labeled (labels are per document in text corpora, and pooling mixes the paragraphs
of a document). The expected fraction of labeled *samples* is then still ``fraction`` per
class, but the realised one varies with the lengths of the chosen documents.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._validation import check_int_vector
from ..errors import DNMFTypeError, DNMFValueError

__all__ = ["mask_labels", "n_known_per_class"]


def _n_keep(n_units: int, fraction: float) -> int:
    return min(n_units, max(1, int(np.floor(fraction * n_units + 0.5))))


def mask_labels(y, fraction: float, random_state=None, *, by_group=None) -> np.ndarray:
    """Keep a stratified, seeded ``fraction`` of the labels; set the others to ``-1``.

    Parameters
    ----------
    y : array-like of int (n_samples,)
        Class codes ``>= 0``; entries already ``-1`` stay unlabeled and are not counted.
    fraction : float in (0, 1]
        Fraction of the labeled units of **each class** that keep their label:
        ``round(fraction * n_units_in_class)``, at least 1 (so every class present in ``y`` has
        a known label), at most all of them.
    random_state : None, int, numpy RandomState or Generator
        Seed of the choice (``sklearn.utils.check_random_state``; a Generator is used
        directly). Same seed -> same mask.
    by_group : array-like of int (n_samples,), optional
        The ``groups`` vector. When given, whole groups are chosen (see module docstring); all
        labeled samples of a group must carry the same class.

    Returns
    -------
    ndarray of int64 (n_samples,)
        ``y`` with the hidden labels set to ``-1`` (a new array).
    """
    y = check_int_vector(y, "y")
    if y.size and y.min() < -1:
        raise DNMFValueError(f"y: expected class codes >= 0 or -1 (unlabeled), found {y.min()}")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise DNMFTypeError(f"fraction: expected a float in (0, 1], found {type(fraction).__name__} {fraction!r}")
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0):
        raise DNMFValueError(f"fraction: expected a float in (0, 1], found {fraction}")
    if isinstance(random_state, np.random.Generator):
        rng = random_state
    else:
        from sklearn.utils import check_random_state

        try:
            rng = check_random_state(random_state)
        except ValueError:
            raise DNMFTypeError(
                f"random_state: expected None, an int, a RandomState or a Generator, found {type(random_state).__name__}"
            ) from None
    labeled = y >= 0
    if not labeled.any():
        raise DNMFValueError("y: expected at least one labeled sample (>= 0), found only -1")
    out = np.full_like(y, -1)

    if by_group is None:
        for c in np.unique(y[labeled]):
            idx = np.flatnonzero(y == c)
            chosen = rng.permutation(idx.size)[: _n_keep(idx.size, fraction)]
            out[idx[chosen]] = c
        return out

    g = check_int_vector(by_group, "by_group", n=y.size)
    gl, yl = g[labeled], y[labeled]
    # one class per group (among its labeled samples)
    order = np.lexsort((yl, gl))
    gs, ys = gl[order], yl[order]
    first = np.r_[True, gs[1:] != gs[:-1]]
    grp_ids = gs[first]
    grp_cls = ys[first]
    last_cls = ys[np.r_[first[1:], True]]
    if np.any(grp_cls != last_cls):
        bad = grp_ids[np.flatnonzero(grp_cls != last_cls)[0]]
        found = np.unique(yl[gl == bad]).tolist()
        raise DNMFValueError(f"by_group: expected one class per group, found group {bad} with classes {found}")
    chosen_groups = []
    for c in np.unique(grp_cls):
        ids = grp_ids[grp_cls == c]
        pick = rng.permutation(ids.size)[: _n_keep(ids.size, fraction)]
        chosen_groups.append(ids[pick])
    keep = labeled & np.isin(g, np.concatenate(chosen_groups))
    out[keep] = y[keep]
    return out


def n_known_per_class(y_masked, n_classes: int | None = None) -> np.ndarray:
    """Number of known (``>= 0``) labels per class code."""
    y = check_int_vector(y_masked, "y_masked")
    known = y[y >= 0]
    return np.bincount(known, minlength=n_classes or 0)
