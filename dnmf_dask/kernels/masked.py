"""NNLS coefficients of samples with missing entries (NaN in dense X) for a fixed basis.

The exact forward pass of the multilayer models solves ``S = argmin_{S>=0} ||X − S Aᵀ||²`` row
by row. A sample with missing entries is fitted on its observed entries only:
``s_i = argmin_{s>=0} Σ_{j observed} (x_ij − (A s)_j)²``, i.e. an NNLS with the rows of A of the
observed features. Complete rows share one Gram matrix and are solved in one batch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .nnls import nnls_gram


def nnls_rows_missing(X, A):
    """S (n, k) ≥ 0 minimising the squared error of X ≈ S Aᵀ over the observed (non-NaN) entries.

    Parameters
    ----------
    X : (n, f) ndarray or sparse matrix; NaN in a dense X marks a missing entry (sparse X has none)
    A : (f, k) ndarray, the fixed basis

    Returns
    -------
    S : (n, k) float64 ndarray; a row with no observed entry is all zero.
    """
    A = np.asarray(A, dtype=np.float64)
    if sp.issparse(X):
        return nnls_gram(A.T @ A, np.asarray(X @ A))
    X = np.asarray(X)
    miss = np.isnan(X)
    rows = np.flatnonzero(miss.any(axis=1))
    if rows.size == 0:
        return nnls_gram(A.T @ A, X @ A)
    S = np.zeros((X.shape[0], A.shape[1]), dtype=np.float64)
    full = np.flatnonzero(~miss.any(axis=1))
    if full.size:
        S[full] = nnls_gram(A.T @ A, X[full] @ A)
    for i in rows:
        obs = ~miss[i]
        if obs.any():
            Ao = A[obs]
            S[i] = nnls_gram(Ao.T @ Ao, (X[i, obs] @ Ao)[None, :])[0]
    return S
