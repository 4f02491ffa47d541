"""Rank-aware output: the ``"xcfg"`` logger, a rank filter, warn-once, and "am I the rank that saves".

Every rank of a parallel run executes the same code, so a plain ``warnings.warn`` or ``print`` appears
once per rank. xcfg's messages go through one :mod:`logging` logger, ``"xcfg"``, with a filter that
passes only global rank 0's records, unless every rank is asked for:

- ``XCFG_LOG_ALL_RANKS=1`` in the environment, or
- :func:`xcfg.log_all_ranks` (``xcfg.log_all_ranks(True)``; ``None`` goes back to the environment).

xcfg adds no handler: with no logging configured, Python prints warnings and errors to stderr (its
"last resort" handler) and drops info and debug records; configure the ``"xcfg"`` logger as usual to
see more (``logging.getLogger("xcfg").setLevel(logging.INFO)`` and a handler). Each record carries
the global rank of the process that emitted it as ``record.xcfg_rank``, for a format such as
``"[rank %(xcfg_rank)s] %(message)s"``.

The rank is read without importing torch: the default process group's rank when ``torch.distributed``
is already imported and initialized, else torchrun's ``RANK`` variable, else 0.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["ALL_RANKS_ENV", "LOGGER_NAME", "RankFilter", "get_logger", "global_rank", "info", "is_main_process",
           "log_all_ranks", "warn_once"]

LOGGER_NAME = "xcfg"
ALL_RANKS_ENV = "XCFG_LOG_ALL_RANKS"
_TRUE = {"1", "true", "yes", "on"}

_all_ranks: bool | None = None  # None: read the environment at each record
_seen: set[tuple[str, int, str]] = set()
_seen_lock = threading.Lock()


def global_rank() -> int:
    """This process's global rank: the default process group's, else torchrun's ``RANK``, else 0.

    Never imports torch: a process that has not imported ``torch.distributed`` has no process group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank())
        except Exception:  # a group being torn down: fall back to the environment
            pass
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def is_main_process() -> bool:
    """Whether this process is global rank 0: the one that saves files and prints results.

    True on global rank 0 of the default process group, on CPU (gloo) and GPU (NCCL) ranks alike; when
    no process group is initialized, true unless torchrun's ``RANK`` names another rank; and true in a
    plain single process. It depends on the rank, never on the device, so two CPU ranks (whose devices
    are both ``cpu``) do not both answer true.

    Example:
        >>> import xcfg
        >>> xcfg.is_main_process()      # no process group, no torchrun here
        True

        In a script launched with ``torchrun --nproc-per-node 2``::

            video = pipe(prompt, guidance_scale=6.0).frames[0]
            if xcfg.is_main_process():
                export_to_video(video, "out.mp4", fps=8)
    """
    return global_rank() == 0


def log_all_ranks(enabled: bool | None = True) -> None:
    """Let xcfg's log records through on every rank (``True``), on rank 0 only (``False``), or as the
    ``XCFG_LOG_ALL_RANKS`` environment variable says (``None``, the initial state).

    On every rank, each record still goes out once per process; put ``%(xcfg_rank)s`` in your format to
    tell the ranks apart.

    Example:
        >>> import xcfg
        >>> xcfg.log_all_ranks(True)     # every rank logs, e.g. while debugging a hang
        >>> xcfg.log_all_ranks(None)     # back to the default: rank 0, or XCFG_LOG_ALL_RANKS=1
    """
    global _all_ranks
    _all_ranks = None if enabled is None else bool(enabled)


def _logging_all_ranks() -> bool:
    if _all_ranks is not None:
        return _all_ranks
    return os.environ.get(ALL_RANKS_ENV, "").strip().lower() in _TRUE


class RankFilter(logging.Filter):
    """Passes records on global rank 0 only, unless all ranks are asked for; tags each record's rank.

    Args:
        all_ranks: ``True`` or ``False`` fixes the choice for this filter; ``None`` follows
            :func:`log_all_ranks` and ``XCFG_LOG_ALL_RANKS``.
    """

    def __init__(self, all_ranks: bool | None = None) -> None:
        super().__init__()
        self.all_ranks = all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        rank = global_rank()
        record.xcfg_rank = rank
        everywhere = _logging_all_ranks() if self.all_ranks is None else self.all_ranks
        return everywhere or rank == 0


_FILTER = RankFilter()


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``"xcfg"`` logger, or its child ``"xcfg.<name>"``, with the rank filter attached.

    A filter on a logger applies only to records logged through that logger, so every child gets it too.
    """
    logger = logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


logger = get_logger()
"""The ``"xcfg"`` logger, rank-filtered."""


def warn_once(message: str, *args: object, logger: logging.Logger | None = None, stacklevel: int = 1) -> bool:
    """Log a warning through the rank-filtered logger, at most once per process for each message.

    The message is ``message % args`` as :mod:`logging` formats it; the same text (from the same logger)
    is not logged again in this process. Returns whether it was logged now (``False`` when it had been
    before, or when this rank's records are filtered out).
    """
    target = logger or globals()["logger"]
    text = message % args if args else message
    key = (target.name, logging.WARNING, text)
    with _seen_lock:
        if key in _seen:
            return False
        _seen.add(key)
    if not target.isEnabledFor(logging.WARNING):
        return False
    record_passes = _logging_all_ranks() or global_rank() == 0
    target.warning("%s", text, stacklevel=stacklevel + 1)
    return record_passes


def info(message: str, *args: object, logger: logging.Logger | None = None) -> None:
    """Log an info record through the rank-filtered logger (shown only where logging is set to INFO)."""
    (logger or globals()["logger"]).info(message, *args)


def _reset_for_tests() -> None:
    """Forget which messages were logged (tests only)."""
    with _seen_lock:
        _seen.clear()
