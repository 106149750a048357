"""Config files for ``dnmf fit --config FILE.toml``.

A config file is TOML (read with the standard library's ``tomllib``: data only, nothing is
executed) whose top-level keys are the options of ``dnmf fit``; flags given on the command line
override the file. Example::

    model = "deep"
    ranks = [20, 5]
    lam = 1.0
    max_iter = 200
    tol = 1e-4
    pool_size = 3          # "pool-size" is accepted too
    backprop_iter = 20
    label_loss = "cross-entropy"   # or "frobenius" (default), "kullback-leibler" / "kl"
    solver = "mu"          # forward layers: "mu", "hals" or "anls"
    backprop_solver = "mu" # backpropagation: "mu" (eq. (4)) or "hals"
    random_state = 0       # or "seed"
    scheduler = "local"

Unknown keys and values of the wrong type are a :class:`~dnmf_dask.errors.DNMFValueError` /
:class:`~dnmf_dask.errors.DNMFTypeError` naming the file and the key. Value ranges (a positive
``max_iter``, ...) are checked by the estimators, as for command-line flags.
"""

from __future__ import annotations

import numbers
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import DNMFTypeError, DNMFValueError

MODELS = ("nmf", "ssnmf", "hierarchical", "deep", "neural")
INITS = ("random", "nndsvd", "nndsvda")
#: the choices of ``dnmf fit --solver / --beta-loss / --label-loss``
SOLVER_CHOICES = ("mu", "hals", "anls")
BACKPROP_SOLVER_CHOICES = ("mu", "hals")
BETA_LOSS_CHOICES = ("frobenius", "kullback-leibler", "kl")
LABEL_LOSS_CHOICES = ("frobenius", "kullback-leibler", "kl", "cross-entropy")


def _int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _ranks(v):
    return isinstance(v, list) and len(v) > 0 and all(_int(r) for r in v)


#: config key -> (argparse dest, check, what the check expects)
FIT_KEYS = {
    "model": ("model", lambda v: v in MODELS, f"one of {list(MODELS)}"),
    "rank": ("rank", _int, "an integer"),
    "ranks": ("ranks", _ranks, "a non-empty list of integers like [20, 5]"),
    "lam": ("lam", _real, "a number"),
    "init": ("init", lambda v: v in INITS, f"one of {list(INITS)}"),
    "max_iter": ("max_iter", _int, "an integer"),
    "tol": ("tol", _real, "a number"),
    "seed": ("seed", _int, "an integer"),
    "random_state": ("seed", _int, "an integer"),
    "pool_size": ("pool_size", _int, "an integer"),
    "backprop_iter": ("backprop_iter", _int, "an integer"),
    "solver": ("solver", lambda v: v in SOLVER_CHOICES, f"one of {list(SOLVER_CHOICES)}"),
    "backprop_solver": ("backprop_solver", lambda v: v in BACKPROP_SOLVER_CHOICES,
                        f"one of {list(BACKPROP_SOLVER_CHOICES)}"),
    "beta_loss": ("beta_loss", lambda v: v in BETA_LOSS_CHOICES, f"one of {list(BETA_LOSS_CHOICES)}"),
    "label_loss": ("label_loss", lambda v: v in LABEL_LOSS_CHOICES, f"one of {list(LABEL_LOSS_CHOICES)}"),
    "scheduler": ("scheduler", lambda v: isinstance(v, str), "a string ('local', 'threads', 'synchronous' or an address)"),
    "workers": ("workers", _int, "an integer"),
    "overwrite": ("overwrite", lambda v: isinstance(v, bool), "true or false"),
}


#: keys whose value is one of a set of strings (a wrong string is a value error, not a type error)
_CHOICE_KEYS = ("model", "init", "solver", "backprop_solver", "beta_loss", "label_loss")


def _describe(v):
    return f"{type(v).__name__} {v!r}"


def load_fit_config(path) -> dict:
    """Read a ``dnmf fit`` config file; return ``{argparse dest: value}`` (ranks as a tuple).

    Raises
    ------
    DNMFValueError
        Missing or unreadable file, invalid TOML, unknown key, a key given twice (``seed`` and
        ``random_state``, ``pool_size`` and ``pool-size``), or a value outside its choices.
    DNMFTypeError
        A value of the wrong type.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise DNMFValueError(f"config: expected an existing TOML file, found nothing at {str(p)!r}") from None
    except OSError as e:
        raise DNMFValueError(f"config: expected a readable TOML file, found {type(e).__name__}: {e.strerror} at {str(p)!r}") from None
    except tomllib.TOMLDecodeError as e:
        raise DNMFValueError(f"config: expected a valid TOML file, found a syntax error in {str(p)!r} ({e})") from None
    out, seen = {}, {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in FIT_KEYS:
            raise DNMFValueError(
                f"config {str(p)!r}: key {raw_key!r}: expected one of the fit options {sorted(FIT_KEYS)}, found an unknown key"
            )
        dest, check, expected = FIT_KEYS[key]
        if dest in seen:
            raise DNMFValueError(f"config {str(p)!r}: key {raw_key!r}: expected once, found it also as {seen[dest]!r}")
        seen[dest] = raw_key
        if not check(value):
            exc = DNMFValueError if isinstance(value, str) and key in _CHOICE_KEYS else DNMFTypeError
            raise exc(f"config {str(p)!r}: key {raw_key!r}: expected {expected}, found {_describe(value)}")
        out[dest] = tuple(int(r) for r in value) if key == "ranks" else value
    return out
