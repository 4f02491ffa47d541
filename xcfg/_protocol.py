"""One denoiser call under the control protocol: announce, compute, confirm, collect.

A style's plan says what this rank computes (``compute``) and which data collective follows
(``collect``); :func:`run_call` runs them between the session's header rounds so that a rank that fails
makes every rank raise, and nobody is left inside a collective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._gather import Layout, join_with_zeros
from ._group import CFGGroup
from ._session import Session

__all__ = ["CallPlan", "LayoutMemory", "run_call"]


@dataclass
class CallPlan:
    """What this rank does for one denoiser call, as a style decided it.

    Attributes:
        compute: runs this rank's forward (its share, a predicted call, or the whole call).
        collect: the call's data collective on ``compute``'s result, returning the result and the layout it
            gathered; ``None`` when the call runs whole on every rank.
        value: what every rank must agree on for this call (the batch, or -1).
        key: what determines the call's output layout (for a rank that must join with zeros later).
    """

    compute: Callable[[], Any]
    collect: Callable[[Any], tuple[Any, Layout]] | None = None
    value: int = -1
    key: tuple[Any, ...] | None = None

    def run_local(self) -> Any:
        """Run without the protocol (under ``torch.compile``, or without a session)."""
        output = self.compute()
        return self.collect(output)[0] if self.collect is not None else output


class LayoutMemory:
    """The output layout of each call shape seen in the current pipeline call (forgotten at the next)."""

    def __init__(self) -> None:
        self.run: int | None = None
        self.known: dict[tuple[Any, ...], Layout] = {}

    def for_run(self, run: int) -> dict[tuple[Any, ...], Layout]:
        if run != self.run:
            self.run, self.known = run, {}
        return self.known


def run_call(session: Session, group: CFGGroup, memory: LayoutMemory, plan: CallPlan) -> Any:
    """Run one denoiser call's plan under the session's protocol.

    The header is posted before ``compute`` and checked after it. The first call of a shape also
    confirms every rank's forward before ``collect``; in a pipeline, later calls of that shape don't, and
    a rank whose forward fails joins ``collect`` with zeros of the layout the first call recorded, then
    reports the failure (met at the next exchange, at the latest the end of the pipeline call). Outside a
    pipeline call (a hand-written loop), nothing after the last call would meet a late report, so every
    split call confirms.
    """
    layouts = memory.for_run(session.run_index)
    split = plan.collect is not None
    layout = layouts.get(plan.key) if split and session.in_pipeline_call else None
    confirm = split and layout is None
    pending = None
    try:
        pending = session.post_call(plan.value, split, confirm)
        output = plan.compute()
    except BaseException as err:
        if not session.aborted:
            session.fail_call(pending, err, None if layout is None else lambda: join_with_zeros(layout, group))
        raise
    session.finish_call(pending, confirm=confirm)
    if plan.collect is None:
        return output
    result, recorded = plan.collect(output)
    layouts.setdefault(plan.key, recorded)
    return result
