"""Notices to the user: warnings through the rank-filtered ``"xcfg"`` logger (:mod:`xcfg._log`), each text once
per process, on global rank 0 unless every rank is asked for; so a 2-rank run prints each notice once."""

from __future__ import annotations

from ._log import warn_once as _log_warn_once

__all__ = ["warn_once"]


def warn_once(message: str) -> bool:
    """Log ``message`` as a warning the first time this process sees it; returns whether it went out here."""
    return _log_warn_once(message)
