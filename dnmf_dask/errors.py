"""The package's exceptions.

Every error raised on bad input derives from :class:`DNMFError` *and* from the matching
built-in (``ValueError`` or ``TypeError``), so callers can catch either. Messages name the
argument, what was expected and what was found.
"""


class DNMFError(Exception):
    """Base class of every error raised by dnmf-dask on bad input or a bad store."""


class DNMFValueError(DNMFError, ValueError):
    """An argument has the right type but a wrong value, shape or content."""


class DNMFTypeError(DNMFError, TypeError):
    """An argument has the wrong type or dtype."""


class StoreError(DNMFValueError):
    """A corpus or model store is missing, incomplete, of another version, or inconsistent."""


class StoreWriteError(StoreError, OSError):
    """A store or output file could not be written (permission denied, disk full, ...).

    Also an ``OSError``; the destination's previous content is left intact.
    """


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``max_iter`` before reaching ``tol``."""
