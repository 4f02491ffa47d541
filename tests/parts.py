"""Several checks in one rank launch (a launch costs 5-40 s on 2 cores), and a call counter.

In the rank function, :func:`run_parts` runs each named check and keeps its result, or its traceback when it
raised, so that one failing check does not hide the others; in the test, :func:`part` takes one check's results
of every rank and fails with the tracebacks if any rank raised.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch


def run_parts(rank: int, world: int, parts: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]) -> dict[str, Any]:
    """``{name: fn(rank, world, *args)}`` for each ``name: (fn, args)``; a part that raises gives its traceback."""
    results: dict[str, Any] = {}
    for name, (fn, args) in parts.items():
        try:
            results[name] = fn(rank, world, *args)
        except Exception:
            results[name] = {"traceback": traceback.format_exc()}
    return results


def part(every_rank: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Every rank's result of the part ``name``; the test fails with the tracebacks of the ranks where it raised."""
    ranks = [r[name] for r in every_rank]
    problems = [f"--- rank {i} ---\n{r['traceback']}" for i, r in enumerate(ranks) if "traceback" in r]
    if problems:
        pytest.fail(f"{name} raised:\n" + "\n".join(problems))
    return ranks


class Calls:
    """Counts the calls of a module (a VAE's decoder: one per tile, per frame of a tile, or per frame batch)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        module.register_forward_pre_hook(self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def take(self) -> int:
        """The calls since the last ``take``."""
        count, self.count = self.count, 0
        return count
