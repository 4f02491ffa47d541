"""Notices to the user: warnings through the rank-filtered ``"xcfg"`` logger (:mod:`xcfg._log`), each text once
per process, on global rank 0 unless every rank is asked for; so a 2-rank run prints each notice once."""

from __future__ import annotations

from ._log import warn_once as _log_warn_once

__all__ = ["warn_once"]


def warn_once(message: str) -> bool:
    """Log ``message`` as a warning the first time this process sees it; returns whether it went out here.

    The record's location is the user's line: the first frame outside xcfg, torch and diffusers."""
    return _log_warn_once(message, stacklevel=_user_frame())


def _user_frame() -> int:
    """How many frames above :func:`xcfg._log.warn_once` the user's line is."""
    import sys

    frame, level = sys._getframe(2), 2
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("xcfg", "torch", "diffusers", "contextlib")):
            return level
        frame, level = frame.f_back, level + 1
    return 2
