"""Rank-specialised numba kernels for sparse (CSR) × skinny dense products and the fused MU sweep.

Shapes: ``X`` is a CSR block (n, m) given as ``(indptr, indices, data)``; the dense factors have
k columns (the rank). Three kernels, each generated for one k:

* :func:`csr_dense` — ``X @ A``: A (m, k) → (n, k);
* :func:`csr_t_dense` — ``Xᵀ @ S``: S (n, k) → (m, k);
* :func:`mu_step` — one sweep over the rows of X that, per row i, forms ``xa = X[i] A``, the new
  row ``S_new[i] = S[i] ⊙ (xa + num_add[i]) / den[i]`` (zero denominators as EPS), adds
  ``x_ij S_new[i]`` to row j of ``Xᵀ S_new`` for the row's nonzeros (still in cache), and sums
  ``⟨S[i], xa⟩`` (float64, for the loss). ``den = S AᵀA`` does not involve X: BLAS forms it.

Why generated per k: with k a run-time value the inner loops over k are short loops of unknown
trip count that LLVM leaves scalar and the row accumulator ``xa`` lives in memory (the fused
sweep of :mod:`dnmf_dask.kernels.fused` runs at scipy's speed for that reason). Here the source of
each kernel is written out for one k, the loop over k unrolled into k named scalars: the
accumulators stay in registers, and LLVM's SLP vectorizer (off in numba by default, switched on
for these kernels' compilation only) packs the k scalar lanes into SIMD loads, FMAs and stores.
Column indices and positions in the CSR arrays are unsigned, so numba generates no
negative-index wraparound per access. Measured speeds and what did not help: BENCHMARKS.md, #7,
"Rank-specialised sparse kernels" (``pipelines/bench/bench_spmm.py`` times the kernels alone).

The generated source is written once to a cache directory (``$NUMBA_CACHE_DIR/dnmf_dask_spmm``
if that variable is set, else ``/tmp/dnmf_dask-<uid>/spmm``) under a name holding a hash of its
text, and imported from there, so numba's on-disk cache (``cache=True``) works for it across
processes: a dask worker loads the compiled kernels instead of compiling them (~1–3 s per k and
dtype). Files are written to a temporary name and renamed into place (atomic; safe for
concurrent processes) and never rewritten (numba's cache keys on the file's mtime); files of an
older generator version (another hash for the same k) older than a day are deleted.

Everything is serial and releases the GIL: the parallelism is over row blocks.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import time

import numba
import numpy as np
from numba.core import config as _numba_config

EPS = float(np.finfo(np.float32).eps)

#: largest rank for which kernels are generated (the unrolled source grows with k)
MAX_K = 64

#: above this rank :func:`mu_step` runs the two product kernels with the update between them in
#: numpy instead of the fused sweep, whose k accumulators, k new values and k denominators per
#: row no longer fit the vector registers (measured, CPU ns/nz fused vs split on a 2.8M-nonzero
#: block: k = 20: 3.35 / 3.38, 32: 6.08 / 6.12, 40: 5.86 / 5.95, 64: 11.5 / 9.0)
FUSED_MAX_K = 48

#: bumped whenever the generator changes what it writes (it is part of the hashed text anyway)
_GENERATOR_VERSION = 2

_STALE_SECONDS = 86400.0


def cache_dir() -> str:
    """Directory of the generated sources (and numba's cache of them, in its ``__pycache__``)."""
    base = os.environ.get("NUMBA_CACHE_DIR")
    if base:
        return os.path.join(base, "dnmf_dask_spmm")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"dnmf_dask-{uid}", "spmm")


# ---------------------------------------------------------------------------------------------
# source generation
# ---------------------------------------------------------------------------------------------
def _lanes(k, fmt, sep="; ", per_line=8, indent=""):
    """Lines of ``fmt.format(t=t)`` for t < k, ``per_line`` statements per line."""
    stmts = [fmt.format(t=t) for t in range(k)]
    return [indent + sep.join(stmts[i:i + per_line]) for i in range(0, k, per_line)]


def _gather(k, ind, x_type, p="p", acc="a"):
    """Source lines: ``acc{t} += x_p A[j_p, t]`` for the nonzero at position ``p``."""
    return [f"{ind}x = {x_type}(data[{p}])", f"{ind}j = indices[{p}]",
            *_lanes(k, acc + "{t} += x * A[j, {t}]", indent=ind)]


def _scatter(k, ind, p="q"):
    """Source lines: ``XtS[j_p, t] += x_p s{t}`` for the nonzero at position ``p``."""
    return [f"{ind}y = XtS.dtype.type(data[{p}])", f"{ind}g = indices[{p}]",
            *_lanes(k, "XtS[g, {t}] += y * s{t}", indent=ind)]


def _update_row(k, ind):
    """Source lines: given ``a{t}`` = (X A)[i], add ``⟨S[i], X A[i]⟩`` to ``dot``, and (if
    ``update_S``) write the new row ``S_new[i] = S[i] ⊙ (X A[i] + num_add[i]) / den[i]``; leave
    the row's new values, in XtS's dtype, in ``s{t}``."""
    return [
        *_lanes(k, "s{t} = S[i, {t}]", indent=ind),
        ind + "dot += " + " + ".join(f"np.float64(s{t}) * np.float64(a{t})" for t in range(k)),
        ind + "if update_S:",
        ind + "    if has_add:",
        *_lanes(k, "a{t} += num_add[i, {t}]", indent=ind + "        "),
        *_lanes(k, "d{t} = den[i, {t}]", indent=ind + "    "),
        *_lanes(k, "d{t} = e if d{t} == z else d{t}", indent=ind + "    "),
        *_lanes(k, "s{t} = s{t} * a{t} / d{t}", indent=ind + "    "),
        *_lanes(k, "S_new[i, {t}] = s{t}", indent=ind + "    "),
        *_lanes(k, "s{t} = XtS.dtype.type(s{t})", indent=ind),
    ]


def generate_source(k: int) -> str:
    """Python source of the kernels for rank ``k`` (the loop over k written out).

    Positions in the CSR arrays are unsigned (``np.uint64``): numba then emits no negative-index
    wraparound per access, a third of the instructions of a nonzero in the loops below.

    ``mu_step`` sweeps a row's nonzeros twice, both times from L1: for ``X[i] A``, then (after
    the row's update) to scatter ``x_ij S_new[i]`` into ``XᵀS_new``. (Measured and dropped: running
    the scatter of row i−1 in the same loop as the sweep of row i, to overlap the FMA chain with
    the read-modify-writes, 2 or 4 interleaved accumulator sets per row, column tiles of a
    block so A's and XᵀS's rows stay in L2, and rows padded to 64-byte lines: none was faster on
    the benchmark machine, the tiles were 1.2–1.7× slower.)
    """
    if not (1 <= k <= MAX_K):
        raise ValueError(f"k: expected 1 <= k <= {MAX_K}, found {k}")
    u64 = "np.uint64"
    L = [
        f'"""dnmf_dask.kernels.spmm kernels for k = {k} (generated; version {_GENERATOR_VERSION})."""',
        "import numba",
        "import numpy as np",
        "",
        "_jit = numba.njit(cache=True, nogil=True, fastmath={'contract'}, error_model='numpy', boundscheck=False)",
        "",
        "",
        "@_jit",
        "def csr_dense(indptr, indices, data, A, out):",
        "    n = indptr.shape[0] - 1",
        "    z = out.dtype.type(0)",
        "    for i in range(n):",
        *_lanes(k, "a{t} = z", indent="        "),
        f"        for p in range({u64}(indptr[i]), {u64}(indptr[i + 1])):",
        *_gather(k, "            ", "out.dtype.type"),
        *_lanes(k, "out[i, {t}] = a{t}", indent="        "),
        "",
        "",
        "@_jit",
        "def csr_t_dense(indptr, indices, data, S, XtS):",
        "    n = indptr.shape[0] - 1",
        "    for i in range(n):",
        *_lanes(k, "s{t} = XtS.dtype.type(S[i, {t}])", indent="        "),
        f"        for q in range({u64}(indptr[i]), {u64}(indptr[i + 1])):",
        *_scatter(k, "            "),
        "",
        "",
        "@_jit",
        "def mu_step(indptr, indices, data, S, A, den, num_add, update_S, eps, S_new, XtS):",
        "    n = indptr.shape[0] - 1",
        "    has_add = num_add.shape[0] == n",
        "    z = S.dtype.type(0)",
        "    e = S.dtype.type(eps)",
        "    dot = 0.0",
        "    for i in range(n):",
        f"        lo = {u64}(indptr[i])",
        f"        hi = {u64}(indptr[i + 1])",
        *_lanes(k, "a{t} = z", indent="        "),
        "        for p in range(lo, hi):",
        *_gather(k, "            ", "S.dtype.type"),
        *_update_row(k, "        "),
        "        for q in range(lo, hi):",
        *_scatter(k, "            "),
        "    return dot",
        "",
    ]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# writing, importing and compiling the generated modules
# ---------------------------------------------------------------------------------------------
_MODULES: dict = {}
_LOCK = threading.Lock()
_COMPILED: set = set()


def _name(k, src):
    return f"spmm_k{k}_{hashlib.sha1(src.encode()).hexdigest()[:16]}"


def _remove_stale(directory, k, keep):
    """Delete generated files of rank k from other generator versions, older than a day."""
    now = time.time()
    for path in glob.glob(os.path.join(directory, f"spmm_k{k}_*.py")):
        if os.path.basename(path) == keep + ".py":
            continue
        try:
            if now - os.path.getmtime(path) > _STALE_SECONDS:
                os.remove(path)
                stem = os.path.splitext(os.path.basename(path))[0]
                for c in glob.glob(os.path.join(directory, "__pycache__", stem + ".*")):
                    os.remove(c)
        except OSError:
            pass  # another process removed it first, or it is not ours to remove


def _write_once(path, src):
    """Write ``src`` to ``path`` unless it exists, atomically (temporary file + os.replace)."""
    if os.path.exists(path):
        return
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(src)
        if os.path.exists(path):  # another process won the race: keep its file (and its mtime)
            os.remove(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def kernels(k: int):
    """The module of kernels for rank ``k`` (generated, written and imported on first use)."""
    mod = _MODULES.get(k)
    if mod is not None:
        return mod
    with _LOCK:
        mod = _MODULES.get(k)
        if mod is not None:
            return mod
        src = generate_source(k)
        name = _name(k, src)
        directory = cache_dir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name + ".py")
        _write_once(path, src)
        _remove_stale(directory, k, name)
        # registered in sys.modules under its own name: numba's cache re-imports a kernel's module
        # by that name when it loads the compiled code
        spec = importlib.util.spec_from_file_location(f"dnmf_dask_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        _MODULES[k] = mod
        return mod


def _run(fn, key, *args):
    """Call a generated kernel; its first call per type signature compiles (or loads from the disk
    cache) with LLVM's SLP vectorizer on, which numba leaves off by default."""
    if key in _COMPILED:
        return fn(*args)
    with _LOCK:
        old = _numba_config.SLP_VECTORIZE
        _numba_config.SLP_VECTORIZE = 1
        try:
            out = fn(*args)
        finally:
            _numba_config.SLP_VECTORIZE = old
        _COMPILED.add(key)
    return out


def _csr(X, dtype):
    """(indptr, unsigned indices, data) of CSR X, views: the data stays float32 or float64 (the
    kernels convert each value to the dtype of their arithmetic as they read it, which is
    exact when they widen float32 to float64, and rounds as a copy would when they narrow), any
    other data dtype is converted to ``dtype``. A float32 block in a float64 product is thus read
    as it is stored (half the bytes) instead of through a float64 copy made per call."""
    indices = X.indices
    if indices.dtype == np.int32:
        indices = indices.view(np.uint32)
    elif indices.dtype == np.int64:
        indices = indices.view(np.uint64)
    else:
        indices = indices.astype(np.uint64)
    data = X.data if X.data.dtype in (np.float32, np.float64) else np.asarray(X.data, dtype=dtype)
    return X.indptr, indices, data


def _key(name, k, *arrays):
    return (name, k) + tuple(a.dtype.str for a in arrays)


def _check_k(F, what):
    if F.ndim != 2 or not (1 <= F.shape[1] <= MAX_K):
        raise ValueError(f"{what}: expected a 2-D array with 1..{MAX_K} columns, found shape {F.shape}")


# ---------------------------------------------------------------------------------------------
# public kernels
# ---------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _sum_squares(data):
    s = 0.0
    for i in range(data.shape[0]):  # (not ``for x in data``: numba's array iterator does not vectorise)
        v = np.float64(data[i])
        s += v * v
    return s


def sq_norm(data) -> float:
    """``Σ x²`` of a 1-D float array, summed in float64 (reassociated: vectorised partial sums).

    numpy's ``einsum(..., dtype=float64)`` of float32 values casts them in buffered chunks,
    ~1 ns per value here; this is one streaming pass."""
    return float(_sum_squares(np.ascontiguousarray(data)))


def csr_dense(X, A, dtype=None):
    """``X @ A``: X csr (n, m), A (m, k) → C-contiguous (n, k) in ``dtype`` (default A's)."""
    _check_k(A, "A")
    dt = np.dtype(dtype or A.dtype)
    A = np.ascontiguousarray(A, dtype=dt)
    if A.shape[0] != X.shape[1]:
        raise ValueError(f"A: expected {X.shape[1]} rows (X's columns), found {A.shape[0]}")
    k = A.shape[1]
    indptr, indices, data = _csr(X, dt)
    out = np.empty((X.shape[0], k), dtype=dt)
    _run(kernels(k).csr_dense, _key("csr_dense", k, indptr, indices, data, A), indptr, indices, data, A, out)
    return out


def csr_t_dense(X, S, out=None, dtype=None):
    """``Xᵀ @ S``: X csr (n, m), S (n, k) → (m, k) in ``dtype`` (default S's), added to ``out``
    if given (C-contiguous (m, k)), else to zeros."""
    _check_k(S, "S")
    if S.shape[0] != X.shape[0]:
        raise ValueError(f"S: expected {X.shape[0]} rows (X's rows), found {S.shape[0]}")
    k = S.shape[1]
    if out is None:
        out = np.zeros((X.shape[1], k), dtype=np.dtype(dtype or S.dtype))
    elif out.shape != (X.shape[1], k) or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous array of shape {(X.shape[1], k)}, found {out.shape}")
    S = np.ascontiguousarray(S)
    indptr, indices, data = _csr(X, S.dtype)
    _run(kernels(k).csr_t_dense, _key("csr_t_dense", k, indptr, indices, data, S, out),
         indptr, indices, data, S, out)
    return out


def mu_step(X, S, A, den, *, num_add=None, update_S=True, xts_dtype=None):
    """The Frobenius MU of a CSR block's S rows and the block's ``Xᵀ S_new``, in one sweep of X.

    Parameters
    ----------
    X : csr_matrix (n, m)
    S : ndarray (n, k), float32 or float64; A, den, num_add and X's values are used in its dtype
    A : ndarray (m, k)
    den : ndarray (n, k)
        The denominator, e.g. ``S AᵀA`` (+ λ (L⊙S Bᵀ) B); zeros are replaced by EPS.
    num_add : ndarray (n, k) or None
        Added to the numerator ``X A`` (e.g. λ Y B).
    update_S : bool
        False: ``S_new`` is S (evaluation pass); XtS is then ``Xᵀ S``.
    xts_dtype : dtype, optional
        Accumulator and result dtype of XtS (default S's, like scipy's product).

    Returns
    -------
    S_new : ndarray (n, k)
    XtS : ndarray (m, k), ``Xᵀ S_new``
    dot : float, ``⟨S, X A⟩`` at the incoming S (summed in float64 row by row)
    """
    _check_k(S, "S")
    dt = S.dtype
    n, k = S.shape
    if X.shape[0] != n or A.shape != (X.shape[1], k) or den.shape != (n, k):
        raise ValueError(f"X, S, A, den: expected shapes (n, m), (n, k), (m, k), (n, k), found "
                         f"{X.shape}, {S.shape}, {A.shape}, {den.shape}")
    S = np.ascontiguousarray(S)
    A = np.ascontiguousarray(A, dtype=dt)
    den = np.ascontiguousarray(den, dtype=dt)
    na = (np.zeros((0, k), dtype=dt) if num_add is None
          else np.ascontiguousarray(np.broadcast_to(num_add, (n, k)), dtype=dt))
    indptr, indices, data = _csr(X, dt)
    S_new = np.empty_like(S) if update_S else S
    XtS = np.zeros((X.shape[1], k), dtype=np.dtype(xts_dtype or dt))
    if k > FUSED_MAX_K:  # the two products, the update between them in numpy (see FUSED_MAX_K)
        XA = csr_dense(X, A)
        dot = float(np.einsum("ij,ij->", S, XA, dtype=np.float64))
        if update_S:
            num = XA if num_add is None else XA + na
            np.divide(S * num, np.where(den == 0, S.dtype.type(EPS), den), out=S_new)
        csr_t_dense(X, S_new, out=XtS)
        return S_new, XtS, dot
    args = (indptr, indices, data, S, A, den, na, bool(update_S), EPS, S_new, XtS)
    dot = _run(kernels(k).mu_step, _key("mu_step", k, indptr, indices, data, S, XtS), *args)
    return S_new, XtS, float(dot)
