"""The control protocol that keeps the ranks of a CFG group in step, or stops all of them together.

Every exchange starts with the same collective: an all-gather of a fixed-size integer header that says
where each rank is (the start of a pipeline run, a denoiser call, the end of a run) and whether it
failed. Because every rank always enters the same collective next, a rank that failed, left the loop
early or took another branch is seen by all ranks at the same point, and all of them raise. Payloads
(error messages, RNG states, input fingerprints) follow only after the headers agreed on them.

A denoiser call costs no rendezvous in the steady state: its header is posted before the forward and
collected after it (:meth:`Session.post_call`, :meth:`Session.finish_call`), so the ranks only need
to be within one forward of each other. Before the data collective of a call the ranks know that all
of them are at the same call with the same batch. The first call of each shape also waits for every
rank's forward to finish; after that, a rank whose forward fails still joins the call's data
collective (with zeros of the shape that call proved) and then reports the failure, which the others
meet at their next exchange, one call later and before their next data collective
(:meth:`Session.fail_call`). Either way every rank raises, and none is left inside a collective.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import DivergenceError, RankError, RankFailedError, RankMismatchError
from ._group import CFGGroup

__all__ = ["Session"]



class Tag(enum.IntEnum):
    SETUP = 1
    RUN_BEGIN = 2
    CALL = 3
    CHECK = 4
    RUN_END = 5
    WORK = 6
    CALL_DONE = 7
    VERIFY = 8


class Flag(enum.IntFlag):
    NONE = 0
    FAILED = 1
    SPLIT = 2


@dataclass
class _Position:
    tag: Tag
    run: int
    call: int
    value: int
    flags: Flag
    aux: int

    @classmethod
    def parse(cls, row: list[int]) -> _Position:
        return cls(Tag(row[0]), row[1], row[2], row[3], Flag(row[4]), row[5])

    def key(self, with_value: bool = True) -> tuple[int, ...]:
        return (self.tag, self.run, self.call, self.aux, self.value if with_value else 0)

    def row(self) -> list[int]:
        return [self.tag, self.run, self.call, self.value, self.flags, self.aux]

    def describe(self) -> str:
        if self.tag is Tag.SETUP:
            return "in parallelize()"
        if self.tag is Tag.RUN_BEGIN:
            return f"starting pipeline call {self.run}"
        if self.tag is Tag.RUN_END:
            return f"ending pipeline call {self.run} after {self.call} denoiser calls"
        if self.tag is Tag.CALL_DONE:
            return f"finishing denoiser call {self.call} of pipeline call {self.run}"
        if self.tag is Tag.VERIFY:
            return f"verifying denoiser call {self.call} of pipeline call {self.run}"
        if self.tag is Tag.WORK:
            return f"in split work {self.value} after denoiser call {self.call} of pipeline call {self.run}"
        split = ", split" if self.flags & Flag.SPLIT else ""
        return f"at denoiser call {self.call} of pipeline call {self.run} (size {self.value}{split})"


class Session:
    """Per-``parallelize`` state shared by the wrapped denoisers and the pipeline hooks.

    Args:
        group: the CFG group (size > 1).
        check_every: also compare the denoiser inputs across ranks every this many calls
            (the first call of each pipeline run is always compared); ``0`` for the first call only.
    """

    def __init__(self, group: CFGGroup, *, check_every: int = 0) -> None:
        self.group = group
        self.check_every = check_every
        self.run_index = 0  # pipeline calls started (begin_run)
        self.call_index = 0  # denoiser calls finished in the current pipeline call
        self.depth = 0  # nesting of pipeline calls: > 0 inside one
        self.aborted = False  # the ranks already agreed that the current call failed
        self._lock = threading.RLock()

    @property
    def in_pipeline_call(self) -> bool:
        """Whether a pipeline call (bracketed by :meth:`begin_run` / :meth:`end_run`) is under way."""
        return self.depth > 0

    # -- protocol rounds -----------------------------------------------------------------------------

    def handshake(self, value: int, aux: int) -> list[int]:
        """Agree on the set-up before installing anything; returns every rank's ``value``."""
        rows = self._round(Tag.SETUP, value=value, aux=aux, flags=Flag.NONE, error=None, compare_value=False)
        return [row.value for row in rows]

    def begin_run(self, generators: list[torch.Generator]) -> None:
        """Start a pipeline run: agree on it and copy rank 0's random state to every rank."""
        self.run_index += 1
        self.call_index = 0
        self.aborted = False
        self._round(Tag.RUN_BEGIN, value=len(generators), flags=Flag.NONE, error=None)
        states = self.group.gather_objects(_rng_states(generators) if self.group.rank == 0 else None, "run start")
        _set_rng_states(generators, states[0])

    def end_run(self, error: BaseException | None) -> None:
        """End a pipeline run. Raises on every rank when any rank failed or the ranks disagree."""
        flags = Flag.FAILED if error is not None else Flag.NONE
        self._round(Tag.RUN_END, value=0, flags=flags, error=error)

    def post_call(self, value: int, split: bool, confirm: bool) -> Callable[[], list[_Position]]:
        """Announce a denoiser call before computing it; returns what :meth:`finish_call` waits on.

        Args:
            value: what every rank must agree on (the batch, or the output size).
            split: whether the call is split (it is followed by a data collective).
            confirm: whether the call will also confirm every rank's forward before its data collective
                (the first call of its shape).
        """
        mine = _Position(Tag.CALL, self.run_index, self.call_index, value, Flag.SPLIT if split else Flag.NONE, int(confirm))
        wait = self.group.post(mine.row(), mine.describe())

        def rows() -> list[_Position]:
            try:
                return [_Position.parse(r) for r in wait()]
            except RankError:
                self.aborted = True
                raise

        return rows

    def finish_call(self, pending: Callable[[], list[_Position]], *, confirm: bool) -> None:
        """After this rank's forward succeeded: collect the announced headers and check them.

        With ``confirm``, also wait until every rank's forward finished (the first call of a shape,
        whose output layout a failing rank could not otherwise match). Raises on every rank when any
        rank failed or the ranks disagree.
        """
        rows = pending()
        self._settle(rows, None, rows[self.group.rank].describe())
        if confirm:
            self._round(Tag.CALL_DONE, value=0, flags=Flag.NONE, error=None)
        self.call_index += 1

    def fail_call(
        self, pending: Callable[[], list[_Position]] | None, error: BaseException, join: Callable[[], None] | None
    ) -> None:
        """This rank's call raised ``error``: keep the others out of a hang, then make every rank raise.

        When the announced headers agreed, the others go on to the call's data collective, so ``join``
        enters it with placeholder data (the first call of a shape passes ``None``: the others wait
        in its confirming round instead). Then this rank reports the failure in a round the others meet
        at their next exchange. Always raises: ``error`` here, :class:`xcfg.RankError` elsewhere.
        """
        if pending is not None:
            rows = pending()
            self._settle(rows, error, rows[self.group.rank].describe())  # raises if another rank failed too
            if join is not None:
                join()
        self._round(Tag.CALL_DONE, value=0, flags=Flag.FAILED, error=error)
        raise error  # not reached: the round raises

    def after_work(self, what: int, error: BaseException | None) -> None:
        """Agree that every rank finished a piece of split work other than a denoiser call.

        Call it on every rank after the local part of the work and before its collective (for example
        decoding this rank's VAE tiles, before gathering them). ``what`` identifies the work (any
        integer every rank computes alike, such as the number of tiles). Raises on every rank when any
        rank failed or the ranks disagree.
        """
        flags = Flag.FAILED if error is not None else Flag.NONE
        self._round(Tag.WORK, value=what, flags=flags, error=error)

    def agree(self, ok: bool) -> bool:
        """Whether every rank's ``ok`` is true (a verification's verdict, the same answer on every rank)."""
        rows = self._round(Tag.VERIFY, value=int(bool(ok)), flags=Flag.NONE, error=None, compare_value=False)
        return all(row.value for row in rows)

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """Compare fingerprints of the denoiser's inputs across ranks when this call is due a check."""
        due = self.call_index == 0 or (self.check_every > 0 and self.call_index % self.check_every == 0)
        if not due:
            return
        self._round(Tag.CHECK, value=0, flags=Flag.NONE, error=None)
        prints = self.group.gather_objects(_fingerprints(inputs), f"input check at denoiser call {self.call_index}")
        for name in sorted(set().union(*prints)):
            values = [p.get(name) for p in prints]
            for r, value in enumerate(values[1:], start=1):
                if not _close(values[0], value):
                    self.aborted = True
                    raise DivergenceError(
                        f"xcfg: the ranks fed different inputs to the denoiser at call {self.call_index} of pipeline call "
                        f"{self.run_index}: {name!r} differs between rank 0 and rank {r} "
                        f"(fingerprints {values[0]} vs {value}). Every rank must call the pipeline with the same "
                        "arguments (prompt, embeddings, latents, size); xcfg already copies rank 0's random "
                        "generator state to every rank at the start of each pipeline call.",
                        rank=r,
                    )

    # -- internals -----------------------------------------------------------------------------------

    def _round(
        self,
        tag: Tag,
        *,
        value: int,
        flags: Flag,
        error: BaseException | None,
        aux: int = 0,
        compare_value: bool = True,
    ) -> list[_Position]:
        mine = _Position(tag, self.run_index, self.call_index, value, flags, aux)
        where = mine.describe()
        with self._lock:
            try:
                rows = [_Position.parse(r) for r in self.group.exchange(mine.row(), where)]
            except RankError:
                self.aborted = True
                raise
            self._settle(rows, error, where, compare_value)
            return rows

    def _settle(
        self, rows: list[_Position], error: BaseException | None, where: str, compare_value: bool = True
    ) -> None:
        """Raise on every rank when a rank failed (naming it) or the ranks are at different points."""
        failed = [r for r, row in enumerate(rows) if row.flags & Flag.FAILED]
        if failed:
            self.aborted = True
            messages = self.group.gather_objects(_summary(error), where)
            if error is not None:
                others = [r for r in failed if r != self.group.rank]
                for r in others:
                    error.add_note(f"xcfg: rank {r} of the CFG group failed too: {messages[r]}")
                raise error
            first = failed[0]
            raise RankFailedError(
                f"xcfg: rank {first} of the CFG group {list(self.group.ranks)} failed "
                f"{rows[first].describe()}: {messages[first]}. This rank (rank {self.group.rank}) stopped at the "
                "same point; nothing is left waiting.",
                rank=first,
            )
        keys = [row.key(compare_value) for row in rows]
        if len(set(keys)) > 1:
            self.aborted = True
            listing = "; ".join(f"rank {r} is {row.describe()}" for r, row in enumerate(rows))
            other = next(r for r, key in enumerate(keys) if key != keys[0])
            raise RankMismatchError(
                f"xcfg: the ranks of the CFG group reached different points: {listing}. Every rank must run the "
                "same pipeline call with the same arguments, and callbacks or interrupts must act on every "
                "rank alike.",
                rank=other,
            )


def _summary(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _rng_states(generators: list[torch.Generator]) -> dict[str, Any]:
    states: dict[str, Any] = {"cpu": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(generators: list[torch.Generator], states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    for generator, state in zip(generators, states["generators"]):
        generator.set_state(state)


def _tensors(value: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{prefix}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}[{key!r}]")


@torch.no_grad()
def _fingerprints(inputs: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Shape, dtype and three float64 sums per tensor: plain, absolute and position-weighted."""
    prints: dict[str, tuple[Any, ...]] = {}
    for name, value in inputs.items():
        for label, tensor in _tensors(value, name):
            flat = tensor.detach().reshape(-1).to(torch.float64)
            weights = (torch.arange(flat.numel(), device=flat.device, dtype=torch.float64) % 31) + 1
            sums = torch.stack([flat.sum(), flat.abs().sum(), (flat * weights).sum()]).tolist()
            prints[label] = (tuple(tensor.shape), str(tensor.dtype), *sums)
    return prints


def _close(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    if a[:2] != b[:2]:
        return False
    scale = abs(a[3]) + abs(b[3]) + 1e-30
    return all(abs(x - y) <= 1e-6 * scale for x, y in zip(a[2:], b[2:]))
