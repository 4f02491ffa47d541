"""CFG styles as strategies: what a style is lives in one object behind one small interface.

A :class:`Style` sees each denoiser call as a :class:`Call` and answers with a
:class:`~xcfg._protocol.CallPlan`: what this rank computes and which data collective follows. The hook
runs the plan under the control protocol and hands the result back to :meth:`Style.finish`, which
records what the style needs to remember (the two-call history) and returns the caller's output.

- :class:`Batched`: one call on ``[uncond, cond]``; split the declared batch inputs, all-gather the output.
- :class:`TwoCall`: two calls per step; predict the uncond call from the previous step, compute the two
  calls on two ranks at once, verify the prediction exactly when the call arrives.
- :class:`Inferred` (in :mod:`xcfg._infer`): no plugin names the class; infer one of the above from the
  calls, verify before trusting.

:data:`STYLES` maps each :class:`xcfg.CFGStyle` to its class; adding a style adds an entry.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from ._binding import Binding
from ._errors import ShapeError
from ._gather import call_key, close, exchange_pair, gather_output, same, same_call, snapshot
from ._group import CFGGroup
from ._protocol import CallPlan
from ._spec import CFGStyle, ModelSpec
from ._tree import tensors

__all__ = ["STYLES", "Call", "Batched", "Style", "TwoCall", "TwoCallHistory"]


@dataclass
class Call:
    """One denoiser call, as a style sees it.

    Attributes:
        module: the denoiser.
        forward: its original forward (without xcfg).
        args: the positional arguments as passed.
        kwargs: the keyword arguments as passed.
        named: every argument by parameter name.
        context: the name of the diffusers ``cache_context`` the pipeline made the call in (``"cond"``,
            ``"uncond"``, a guider's identifier), or ``None``.
        whole: this call must run whole on every rank (PAG, a diffusers cache).
    """

    module: torch.nn.Module
    forward: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    named: dict[str, Any]
    context: str | None = None
    whole: bool = False
    role: str = "first"  # two-call: which call of its step this is
    predicted: dict[str, Any] | None = None  # two-call: the uncond call this rank's peer computes alongside

    def run_whole(self) -> Any:
        return self.forward(*self.args, **self.kwargs)


@dataclass
class Stats:
    """What a style did, for reports and the "nothing was split" notice (not counted inside a compiled
    graph: a counter there would be a guard that recompiles at every call)."""

    calls: int = 0
    split: int = 0  # calls computed in shares across the ranks (batched) or on two ranks at once (two-call)
    predictions: int = 0  # two-call: uncond calls computed ahead on the other rank

    def count(self, name: str) -> None:
        if not torch.compiler.is_compiling():
            setattr(self, name, getattr(self, name) + 1)


class Style(abc.ABC):
    """How one CFG style recognises, splits, runs, gathers and verifies a denoiser call.

    Args:
        spec: the model's spec (an inferred style gets a placeholder).
        model_class: the denoiser's class, whose ``forward`` the arguments bind to.
        group: the CFG group.
        shared: state the styles of one ``parallelize`` share (the two-call history of Wan 2.2's experts).
    """

    style: CFGStyle

    def __init__(self, spec: ModelSpec, model_class: type, group: CFGGroup, shared: dict[str, Any]) -> None:
        self.spec = spec
        self.group = group
        self.binding = Binding.of(spec, model_class)
        self.stats = Stats()
        self.run: int | None = None
        self.agree: Any = lambda ok: ok  # every rank's verdict; the hook gives it the session's round
        self.on_mismatch: Any = None  # called once with the reason when a verification fails

    def start_run(self, run: int) -> None:
        """A new pipeline call began (``run`` is its index): forget what belongs to the previous one."""
        self.run = run

    @abc.abstractmethod
    def plan(self, call: Call) -> CallPlan:
        """Decide what this rank computes for ``call`` (the same decision on every rank)."""

    def finish(self, call: Call, plan: CallPlan, result: Any) -> Any:
        """Take the plan's result (after its collective) and return what the caller gets."""
        return result

    def whole(self, call: Call) -> CallPlan:
        """A plan that runs the call whole on every rank."""
        return CallPlan(compute=call.run_whole, value=-1)


class Batched(Style):
    """One call per step on the batch ``[uncond, cond]``: each rank computes its share, outputs all-gathered.

    A batch that does not divide by the group size (CFG off, SD3's skip-layer call) runs whole.
    """

    style = CFGStyle.BATCHED

    def __init__(self, spec: ModelSpec, model_class: type, group: CFGGroup, shared: dict[str, Any]) -> None:
        super().__init__(spec, model_class, group, shared)
        self.per_sample = any(item.per_sample for item in spec.batch_inputs)

    def plan(self, call: Call) -> CallPlan:
        self.stats.count("calls")
        group, binding = self.group, self.binding
        batch = binding.batch_size(call.args, call.kwargs)
        if call.whole or group.size == 1 or batch is None or batch % group.size:
            return CallPlan(compute=call.run_whole, value=-1 if batch is None else batch)
        args, kwargs = binding.split(call.args, call.kwargs, batch, group.rank, group.size)
        share, per_sample = batch // group.size, self.per_sample
        self.stats.count("split")
        if torch.compiler.is_compiling():  # no error translation inside a graph
            return CallPlan(
                compute=lambda: call.forward(*args, **kwargs),
                collect=lambda output: gather_output(output, share, group, per_sample=per_sample),
            )

        def compute() -> Any:
            try:
                return call.forward(*args, **kwargs)
            except Exception as err:
                self._blame_spec(err, call, batch)
                raise

        def collect(output: Any) -> tuple[Any, Any]:
            try:
                return gather_output(output, share, group, per_sample=per_sample)
            except ShapeError as err:
                self._blame_spec(err, call, batch)
                raise

        return CallPlan(compute=compute, collect=collect, value=batch, key=call_key(call.named))

    def _blame_spec(self, err: Exception, call: Call, batch: int) -> None:
        """A split call failed: if arguments the spec does not declare carry the batch, say so."""
        declared = {item.name for item in self.spec.batch_inputs}
        suspects = [
            label
            for name, value in call.named.items()
            if name not in declared
            for label, leaf in tensors(value, name)
            if leaf.dim() > 0 and leaf.shape[0] == batch
        ]
        if suspects:
            raise ShapeError(
                f"xcfg: a batch argument is probably missing from the spec of {self.spec.name}: after its batch of "
                f"{batch} was split, the call failed with {type(err).__name__}: {err}. These arguments also have "
                f"{batch} at dim 0 but are not declared, so each rank got them whole: {', '.join(suspects)}. Add the "
                "ones that carry the batch to batch_inputs (or drop the plugin and let xcfg infer them)."
            ) from err


@dataclass
class TwoCallHistory:
    """What the two-call styles of one pipeline remember of the last step (shared by Wan 2.2's experts)."""

    run: int | None = None
    first: dict[str, Any] | None = None  # the last first call's arguments
    first_context: str | None = None  # the cache context the last first call was made in
    uncond: dict[str, Any] | None = None  # the last second call's arguments
    branch: tuple[str, ...] | None = None  # the arguments that differed within the last pair
    last_role: str = ""

    def reset(self, run: int) -> None:
        self.__init__(run=run)  # type: ignore[misc]


@dataclass
class _Prediction:
    """An uncond call computed ahead by rank 1, and its output (every rank holds it)."""

    call: dict[str, Any]
    output: Any


class TwoCall(Style):
    """Two calls per step at batch B, cond then uncond: the two calls of a step run on two ranks at once.

    The second call's arguments are not known when the first call arrives, but across steps they follow a
    pattern: the arguments that differed between the two calls of the previous step (the prompt side) keep
    their uncond values, the rest (latents, timestep, ...) are the first call's. So from the second step
    on, at the first call rank 0 computes the call as given and rank 1 computes the predicted uncond call;
    the ranks exchange the two outputs. When the second call arrives and equals the prediction (checked
    exactly), its output is returned without computing; otherwise every rank computes it, so a wrong
    prediction costs time, never correctness. A step with a single call runs whole on every rank.

    Which call of a step is which: the pipeline's ``cache_context`` name where it gives one (a call in
    another context than the step's first call is its second), else the second call is the one with the
    first call's latents and timestep.

    Args:
        verify: also compute the first predicted call of each pipeline call for real and compare; a
            mismatch (state that no argument shows) stops predicting (used by the inferred mode).
    """

    style = CFGStyle.TWO_CALL

    def __init__(
        self, spec: ModelSpec, model_class: type, group: CFGGroup, shared: dict[str, Any], *, verify: bool = False
    ) -> None:
        super().__init__(spec, model_class, group, shared)
        self.latent = self.binding.names[0] if self.binding.names else "hidden_states"
        self.history: TwoCallHistory = shared.setdefault("two_call_history", TwoCallHistory())
        self.pending: _Prediction | None = None
        self.verify = verify
        self.trusted: bool | None = None if verify else True  # None: not verified yet

    @property
    def predictions(self) -> int:
        return self.stats.predictions

    def start_run(self, run: int) -> None:
        super().start_run(run)
        self.pending = None
        if self.history.run != run:
            self.history.reset(run)

    def _is_second(self, call: Call) -> bool:
        history = self.history
        if history.last_role != "first" or history.first is None:
            return False
        if call.context is not None and history.first_context is not None:
            return call.context != history.first_context
        return all(same(call.named.get(k), history.first.get(k)) for k in (self.latent, "timestep"))

    def _prediction(self, call: Call) -> dict[str, Any] | None:
        history = self.history
        if self.group.size != 2 or call.whole or self.trusted is False or history.branch is None or history.uncond is None:
            return None
        predicted = dict(call.named)
        for name in history.branch:
            if name in history.uncond:
                predicted[name] = history.uncond[name]
            else:
                predicted.pop(name, None)
        return predicted

    def plan(self, call: Call) -> CallPlan:
        self.stats.count("calls")
        pending = self.pending
        latent = call.named.get(self.latent)
        value = latent.shape[0] if isinstance(latent, torch.Tensor) and latent.dim() else -1
        if pending is not None and same_call(call.named, pending.call):
            call.role = "second"
            if self.trusted is None:  # the first prediction this style consumes: compute it for real too
                return CallPlan(compute=call.run_whole, collect=lambda out: (self._verified(out, pending.output), []),
                                value=value, key=("verify",))
            return CallPlan(compute=lambda: pending.output, value=value)  # answered by the prediction
        if self._is_second(call):
            call.role = "second"
            return CallPlan(compute=call.run_whole, value=value)
        predicted = self._prediction(call)
        if predicted is None:
            return CallPlan(compute=call.run_whole, value=value)
        call.predicted = predicted
        local = call.named if self.group.rank == 0 else predicted
        self.stats.count("split")
        self.stats.count("predictions")
        group = self.group
        return CallPlan(
            compute=lambda: call.forward(**local),
            collect=lambda output: exchange_pair(output, group),
            value=value,
            key=call_key(call.named),
        )

    def _verified(self, real: Any, predicted: Any) -> Any:
        match = close(predicted, real, _tolerance(real))
        agreed = self.agree(match)
        self.trusted = agreed
        if not agreed and self.on_mismatch is not None:
            self.on_mismatch("its predicted uncond call differed from the real one (state that no argument shows)")
        return real

    def finish(self, call: Call, plan: CallPlan, result: Any) -> Any:
        history = self.history
        predicted, role = call.predicted, call.role
        if predicted is not None:
            output, uncond_output = result
            self.pending = _Prediction(snapshot(predicted), uncond_output)
        else:
            output = result
        if role == "first":
            history.first = snapshot(call.named)
            history.first_context = call.context
            if predicted is None:
                self.pending = None
        else:
            history.uncond = snapshot(call.named)
            first = history.first or {}
            names = set(first) | set(call.named)
            history.branch = tuple(
                sorted(n for n in names if (n in first) != (n in call.named) or not same(first.get(n), call.named.get(n)))
            )  # an argument passed in one call and left out of the other differs too
            self.pending = None
        history.last_role = role
        return output


def _tolerance(output: Any) -> float:
    """How close a recomputed output must be: fp32 within 1e-4, half types within 2e-2."""
    dtypes = {t.dtype for _, t in tensors(output)}
    return 1e-4 if dtypes <= {torch.float32, torch.float64} else 2e-2


STYLES: dict[CFGStyle, type[Style]] = {
    CFGStyle.BATCHED: Batched,
    CFGStyle.TWO_CALL: TwoCall,
}
"""The style class for each declared :class:`xcfg.CFGStyle` (``NONE`` is refused, never installed)."""

