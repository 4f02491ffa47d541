"""Notices to the user: each one once per process (every rank would otherwise print it too)."""

from __future__ import annotations

import threading
import warnings

__all__ = ["warn_once"]

_seen: set[str] = set()
_lock = threading.Lock()


def warn_once(message: str, category: type[Warning] = UserWarning) -> bool:
    """Issue ``message`` as a warning the first time this process sees it; returns whether it did."""
    with _lock:
        if message in _seen:
            return False
        _seen.add(message)
    warnings.warn(message, category, stacklevel=_user_frame())
    return True


def _user_frame() -> int:
    """The stack level of the first frame outside xcfg, torch and diffusers (the user's line)."""
    import sys

    frame, level = sys._getframe(2), 2
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("xcfg", "torch", "diffusers", "contextlib")):
            return level
        frame, level = frame.f_back, level + 1
    return 2
