"""Input checks shared by the store, the estimators and the CLI (one place, one message style).

Dtype rule: float32 and float64 are kept; integer, unsigned and boolean data become float64;
float16 becomes float32; object arrays whose entries are all real numbers become float64 (as in
scikit-learn); anything else (strings, complex, object arrays holding other things) is rejected.
"""

from __future__ import annotations

import numbers
import warnings

import dask.array as da
import numpy as np
import scipy.sparse as sp

from .errors import DNMFTypeError, DNMFValueError


def float_dtype(dtype, name="X") -> np.dtype:
    """The floating dtype data of ``dtype`` is converted to (see module docstring)."""
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    if dtype.kind == "c":  # a value error in scikit-learn's convention ("Complex data not supported")
        raise DNMFValueError(f"{name}: expected real (integer or floating) values, found dtype {dtype} (Complex data not supported)")
    raise DNMFTypeError(f"{name}: expected a numeric (integer or floating) dtype, found {dtype}")


def check_not_empty(shape, name="X"):
    """Raise unless ``shape`` (n_samples, n_features) has at least one sample and one feature."""
    n, f = shape
    if n == 0 or f == 0:
        what = f"0 sample(s) (shape={tuple(shape)})" if n == 0 else f"0 feature(s) (shape={tuple(shape)})"
        raise DNMFValueError(f"{name}: expected at least one sample and one feature, found {what} while a minimum of 1 is required.")


def _object_to_float(arr, name):
    """An object array of real numbers as float64; strings, None, dicts ... are a DNMFTypeError."""
    for v in arr.flat:
        if not isinstance(v, numbers.Real):
            raise DNMFTypeError(
                f"{name}: expected an object array of real numbers, found an entry of type {type(v).__name__} "
                "(every argument must be a real number; a string or any other non-numeric object is not a number)"
            )
    return arr.astype(np.float64)


def _kind(X) -> str:
    return "dask array" if isinstance(X, da.Array) else "sparse matrix" if sp.issparse(X) else type(X).__name__


def _reshape_hint(ndim):
    if ndim != 1:
        return ""
    return " (Reshape your data with X.reshape(-1, 1) if it has one feature or X.reshape(1, -1) if it is one sample)"


def check_matrix(X, name="X", *, allow_nan=False, allow_negative=False, allow_dask=True):
    """Return X as a 2-D float numpy array, CSR matrix or dask array, or raise a clear error.

    Values of dask arrays are not inspected here (that would read the data); the estimators check
    them in their first pass over the data.
    """
    if isinstance(X, da.Array):
        if not allow_dask:
            raise DNMFTypeError(f"{name}: expected an in-memory array, found a dask array")
        if X.ndim != 2:
            raise DNMFValueError(f"{name}: expected a 2-D array (n_samples, n_features), found {X.ndim}-D shape {X.shape}{_reshape_hint(X.ndim)}")
        if any(np.isnan(c) for c in X.shape):
            raise DNMFValueError(f"{name}: expected a dask array with known chunk sizes, found shape {X.shape} (call X.compute_chunk_sizes())")
        dt = float_dtype(X.dtype, name) if X.dtype.kind != "O" else None
        if dt is None:
            raise DNMFTypeError(f"{name}: expected a numeric dtype, found {X.dtype}")
        return X.astype(dt) if dt != X.dtype else X
    if sp.issparse(X):
        dt = float_dtype(X.dtype, name)
        X = sp.csr_matrix(X, dtype=dt)
        if X.ndim != 2:
            raise DNMFValueError(f"{name}: expected a 2-D matrix, found shape {X.shape}")
        data = X.data
        if data.size and not np.isfinite(data).all():  # sparse X marks missing data with observed=, never NaN
            raise DNMFValueError(f"{name}: expected finite values, found NaN or inf in the stored entries (pass observed= for missing data)")
        if not allow_negative and data.size and np.nanmin(data) < 0:
            raise DNMFValueError(f"{name}: expected nonnegative values, found minimum {np.nanmin(data):g} (Negative values in data)")
        return X
    if hasattr(X, "X") and hasattr(X, "row_offsets"):  # an opened Corpus
        return check_matrix(X.X, name, allow_nan=allow_nan, allow_negative=allow_negative, allow_dask=allow_dask)
    try:
        arr = np.asarray(X)
    except Exception as e:  # ragged lists and the like
        raise DNMFTypeError(f"{name}: expected a 2-D numeric array, found {_kind(X)} that numpy cannot convert ({e})") from None
    if arr.dtype.kind in "USV":
        raise DNMFTypeError(f"{name}: expected a numeric dtype, found {arr.dtype}")
    if arr.ndim != 2:
        raise DNMFValueError(f"{name}: expected a 2-D array (n_samples, n_features), found {arr.ndim}-D shape {arr.shape}{_reshape_hint(arr.ndim)}")
    if arr.dtype.kind == "O":
        arr = _object_to_float(arr, name)
    arr = arr.astype(float_dtype(arr.dtype, name), copy=False)
    if np.isinf(arr).any():
        raise DNMFValueError(f"{name}: expected finite values, found inf")
    if not allow_nan and np.isnan(arr).any():
        raise DNMFValueError(f"{name}: expected no NaN (pass observed= or use a model that allows missing data), found NaN")
    if not allow_negative and arr.size and np.nanmin(arr) < 0:
        raise DNMFValueError(f"{name}: expected nonnegative values, found minimum {np.nanmin(arr):g} (Negative values in data)")
    return arr


def check_labels(y, n_samples, name="y"):
    """Integer labels (n_samples,), ``-1`` = unlabeled; other negative values are rejected.

    A column vector (n_samples, 1) is flattened with a ``DataConversionWarning`` (as scikit-learn
    does); an object array of integers is converted; floats must hold integral values.
    """
    y_arr = np.asarray(y)
    if y_arr.ndim == 2 and y_arr.shape == (n_samples, 1):
        from sklearn.exceptions import DataConversionWarning

        warnings.warn(f"A column-vector y was passed when a 1d array was expected ({name}: flattened to shape ({n_samples},))",
                      DataConversionWarning, stacklevel=3)
        y_arr = y_arr.ravel()
    if y_arr.ndim != 1 or y_arr.shape[0] != n_samples:
        raise DNMFValueError(f"{name}: expected shape ({n_samples},) (one label per sample), found shape {y_arr.shape}")
    if y_arr.dtype.kind == "O":
        y_arr = np.asarray(y_arr.tolist())
    if y_arr.dtype.kind == "f":
        if not np.all(np.isfinite(y_arr)) or np.any(y_arr != np.round(y_arr)):
            bad = y_arr[~np.isfinite(y_arr) | (y_arr != np.round(y_arr))][0].item()
            raise DNMFValueError(
                f"{name}: expected integer class labels (-1 = unlabeled), found non-integer value {bad!r} (Unknown label type: continuous)"
            )
    elif y_arr.dtype.kind not in "iub":
        raise DNMFTypeError(
            f"{name}: expected integer class labels (-1 = unlabeled), found dtype {y_arr.dtype} (Unknown label type: not integer codes; "
            "encode class names with sklearn.preprocessing.LabelEncoder)"
        )
    y_arr = y_arr.astype(np.int64)
    if y_arr.size and y_arr.min() < -1:
        raise DNMFValueError(f"{name}: expected labels >= 0 or -1 for unlabeled, found {y_arr.min()}")
    return y_arr


def check_label_coverage(y, label_names, name="y"):
    """Every class named in ``label_names`` has a labeled sample and no code is out of range.

    Without the names the classes are the labeled codes themselves (``classes_``), so a class
    with no labeled sample cannot be detected; with a corpus's ``label_names`` it is an error.
    """
    n_classes = len(label_names)
    known = y[y >= 0]
    if known.size and known.max() >= n_classes:
        raise DNMFValueError(f"{name}: expected class codes < {n_classes} (one per label name), found {known.max()}")
    counts = np.bincount(known, minlength=n_classes)
    if known.size and (counts == 0).any():
        c = int(np.flatnonzero(counts == 0)[0])
        raise DNMFValueError(
            f"{name}: expected at least one labeled sample of every class in label_names, found none of class {c} "
            f"({label_names[c]!s}) ({int((counts == 0).sum())} of {n_classes} classes have none)"
        )


def check_groups(groups, n_samples):
    """Group ids (n_samples,), each group contiguous; returned as int64 codes in order of appearance."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n_samples:
        raise DNMFValueError(f"groups: expected shape ({n_samples},) (one group id per sample), found shape {g.shape}")
    if n_samples == 0:
        return g.astype(np.int64)
    change = np.r_[True, g[1:] != g[:-1]]
    run_ids = g[change]
    if len(np.unique(run_ids)) != len(run_ids):
        vals, counts = np.unique(run_ids, return_counts=True)
        bad = vals[counts > 1][0].item()
        raise DNMFValueError(
            f"groups: expected the samples of each group to be contiguous, found group {bad!r} in {counts[counts > 1][0]} separate runs"
        )
    return (np.cumsum(change) - 1).astype(np.int64)


def check_observed(observed, shape, sparse_X):
    """Boolean data mask W like X (dense), or, for sparse X, a sparse matrix whose pattern = observed."""
    if observed is None:
        return None
    if sp.issparse(observed):
        if observed.shape != shape:
            raise DNMFValueError(f"observed: expected shape {shape} like X, found {observed.shape}")
        return sp.csr_matrix(observed, dtype=bool)
    if isinstance(observed, da.Array):
        if observed.shape != shape:
            raise DNMFValueError(f"observed: expected shape {shape} like X, found {observed.shape}")
        return observed.astype(bool)
    w = np.asarray(observed)
    if w.shape != shape:
        raise DNMFValueError(f"observed: expected a boolean mask of shape {shape} like X, found shape {w.shape}")
    if w.dtype != bool:
        if w.dtype.kind not in "iuf" or not np.isin(w, (0, 1)).all():
            raise DNMFTypeError(f"observed: expected a boolean mask, found dtype {w.dtype} with values other than 0/1")
        w = w.astype(bool)
    return w


def check_int_vector(v, name, n=None) -> np.ndarray:
    """A 1-D integer array (``n`` entries if given) as int64; floats holding integers get a hint."""
    arr = np.asarray(v)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            raise DNMFTypeError(f"{name}: expected an integer array, found dtype {arr.dtype} (cast it with .astype(int))")
        raise DNMFTypeError(f"{name}: expected an integer array, found dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DNMFValueError(f"{name}: expected a 1-D array, found shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise DNMFValueError(f"{name}: expected {n} entries (one per sample), found {arr.shape[0]}")
    return arr.astype(np.int64, copy=False)


def check_positive_int(value, name, *, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DNMFValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return int(value)


def check_nonneg_float(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise DNMFValueError(f"{name}: expected a finite number >= 0, found {value!r}")
    return float(value)


def check_choice(value, name, choices):
    if value not in choices:
        raise DNMFValueError(f"{name}: expected one of {sorted(map(str, choices))}, found {value!r}")
    return value
