"""One denoiser call under the control protocol: announce, compute, check, collect (guarded).

A style's plan says what this rank computes (``compute``) and which data collective follows
(``collect``); :func:`run_call` runs them between the session's header rounds so that a rank that fails
makes every rank raise, and nobody is left inside a collective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import RankError
from ._gather import Layout
from ._group import CFGGroup
from ._session import Session

__all__ = ["CallPlan", "run_call"]


@dataclass
class CallPlan:
    """What this rank does for one denoiser call, as a style decided it.

    Attributes:
        compute: runs this rank's forward (its share, a predicted call, or the whole call).
        collect: the call's data collective on ``compute``'s result, returning the result and the layout it
            gathered; ``None`` when the call runs whole on every rank.
        value: what every rank must agree on for this call (the batch, or -1).
        key: what determines the call's output layout (the call's shape; kept for the styles and reports).
    """

    compute: Callable[[], Any]
    collect: Callable[[Any], tuple[Any, Layout]] | None = None
    value: int = -1
    key: tuple[Any, ...] | None = None

    def run_local(self) -> Any:
        """Run without the protocol (under ``torch.compile``, or without a session)."""
        output = self.compute()
        return self.collect(output)[0] if self.collect is not None else output


def run_call(session: Session, group: CFGGroup, plan: CallPlan) -> Any:
    """Run one denoiser call's plan under the session's protocol.

    The header is posted before ``compute`` and checked after it, before ``collect``. A rank whose
    ``compute`` fails, or whose ``collect`` fails before or inside its data collective, stands in for
    what the others wait in (:meth:`Session.fail_call`, :meth:`Session.fail_collective`): every rank
    raises at this call, the failing rank its own error. No call waits for the other ranks' forwards.
    A failing rank learns the size of the collective it stands in for from the others' guard rows.
    """
    split = plan.collect is not None
    pending = None
    try:
        pending = session.post_call(plan.value, split)
        output = plan.compute()
    except BaseException as err:
        session.fail_call(pending, err)
        raise  # not reached: fail_call raises
    try:
        session.finish_call(pending)
    except RankError:
        session.aborted = True
        raise
    if plan.collect is None:
        return output
    where = f"the data collective of denoiser call {session.call_index - 1} of pipeline call {session.run_index}"
    try:
        with group.labelled(where):
            result, _layout = plan.collect(output)
    except BaseException as err:
        session.fail_collective(err, where)
        raise  # not reached
    return result
