"""The split/gather forward wrapper: from a spec and a CFG group, a named, removable hook on a denoiser."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ._errors import SetupError, ShapeError
from ._group import CFGGroup
from ._registry import check_inputs, forward_parameters
from ._session import Session
from ._spec import BatchInput, CFGStyle, ModelSpec

__all__ = ["HOOK_NAME", "Wrapped", "wrap_denoiser"]

HOOK_NAME = "xcfg"


@dataclass(frozen=True)
class _Slot:
    """Where one batch input sits in a call: its keyword name and, if it can be positional, its index."""

    item: BatchInput
    index: int | None


class _Plan:
    """A spec bound to one class's forward signature: reads, splits and gathers arguments by name."""

    def __init__(self, spec: ModelSpec, cls: type) -> None:
        check_inputs(spec, cls)
        params = forward_parameters(cls)
        positional = [
            name
            for name, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        self.names = tuple(positional)
        self.slots = tuple(
            _Slot(item, positional.index(item.name) if item.name in positional else None) for item in spec.batch_inputs
        )

    def bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Every passed argument by name."""
        named = dict(zip(self.names, args))
        named.update(kwargs)
        return named

    def _get(self, slot: _Slot, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = slot.item.name
        if name in kwargs:
            value = kwargs[name]
        elif slot.index is not None and slot.index < len(args):
            value = args[slot.index]
        else:
            return None
        if slot.item.key is not None:
            return value.get(slot.item.key) if isinstance(value, dict) else None
        return value

    def batch_size(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """The batch of this call, from the first batch input that is a tensor; checks the others.

        Raises:
            ShapeError: a batch input has a size at its batch dimension that is neither the batch nor 1.
        """
        batch: int | None = None
        first = ""
        for slot in self.slots:
            for tensor in _leaves(self._get(slot, args, kwargs)):
                dim = slot.item.dim
                if tensor.dim() <= dim:
                    continue
                size = tensor.shape[dim]
                if batch is None:
                    batch, first = size, slot.item.label
                elif size not in (batch, 1):
                    raise ShapeError(
                        f"xcfg: {slot.item.label} has size {size} at its batch dimension {dim}, but {first} has batch "
                        f"{batch}. Every batch argument must carry the same batch (or 1 to broadcast); if this argument "
                        "is shared by all samples, remove it from the spec's batch_inputs."
                    )
        return batch

    def split(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int, rank: int, size: int
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """This rank's share of every batch input; everything else unchanged and in the same form."""
        share = batch // size
        args_list, kwargs = list(args), dict(kwargs)
        for slot in self.slots:
            item = slot.item
            if item.name in kwargs:
                holder, where = kwargs, item.name
            elif slot.index is not None and slot.index < len(args_list):
                holder, where = args_list, slot.index
            else:
                continue
            value = holder[where]
            cut = functools.partial(_narrow, dim=item.dim, batch=batch, start=rank * share, length=share)
            if item.key is None:
                holder[where] = _map(value, cut)
            elif isinstance(value, dict) and item.key in value:
                holder[where] = {**value, item.key: _map(value[item.key], cut)}
        return tuple(args_list), kwargs


def _leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(fn(v) if isinstance(v, torch.Tensor) else v for v in value)
    return value


def _narrow(tensor: torch.Tensor, *, dim: int, batch: int, start: int, length: int) -> torch.Tensor:
    if tensor.dim() <= dim or tensor.shape[dim] != batch:
        return tensor  # a scalar or a broadcast (size 1) input: every rank takes it whole
    return tensor.narrow(dim, start, length)


_Layout = list[tuple[torch.Size, torch.dtype, torch.device]]


def _gather_output(output: Any, share: int, group: CFGGroup) -> tuple[Any, _Layout]:
    """All-gather every output tensor whose leading dimension is this rank's share; keep the type.

    Returns:
        The gathered output and its layout: what was gathered, in order (see :func:`_join`).

    Raises:
        ShapeError: no output tensor has this rank's share as its batch, so the model did not compute
            on the split batch alone: an argument carrying the batch is missing from the spec.
    """
    gathered: _Layout = []

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() > 0 and value.shape[0] == share:
                gathered.append((value.shape, value.dtype, value.device))
                return group.all_gather(value)
            return value
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(walk(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, dict):
            return type(value)(**{k: walk(v) for k, v in value.items()})
        return value

    result = walk(output)
    if not gathered and _output_size(output):
        raise ShapeError(
            f"xcfg: the model returned no output of this rank's batch share ({share}) after its batch was split: a "
            "forward argument that carries the batch is probably missing from the spec's batch_inputs (it reached the "
            "model whole and broadcast the batch back). Declare it, or check the spec with xcfg.testing.check_example."
        )
    return result, gathered


def _join(layout: _Layout, group: CFGGroup) -> None:
    """Enter the data collectives of a call whose forward failed on this rank, with zeros of its layout."""
    for shape, dtype, device in layout:
        group.all_gather(torch.zeros(shape, dtype=dtype, device=device))


def _call_key(named: dict[str, Any]) -> tuple[Any, ...]:
    """What determines a call's output layout: every tensor's shape and dtype, and the plain values."""
    key: list[Any] = []
    for name, value in named.items():
        for label, leaf in _leaves_named(value, name):
            if isinstance(leaf, torch.Tensor):
                key.append((label, tuple(leaf.shape), leaf.dtype))
            elif leaf is None or isinstance(leaf, (bool, int, float, str)):
                key.append((label, leaf))
    return tuple(key)


def _leaves_named(value: Any, label: str) -> list[tuple[str, Any]]:
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in _leaves_named(v, f"{label}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _leaves_named(v, f"{label}[{k!r}]")]
    return [(label, value)]


class _Layouts:
    """The output layout of each call shape seen in the current pipeline run (reset with the run)."""

    def __init__(self) -> None:
        self.run: int | None = None
        self.known: dict[tuple[Any, ...], _Layout] = {}

    def for_run(self, run: int) -> dict[tuple[Any, ...], _Layout]:
        if run != self.run:
            self.run, self.known = run, {}
        return self.known


def _controlled(
    session: Session,
    group: CFGGroup,
    layouts: dict[tuple[Any, ...], _Layout],
    key: tuple[Any, ...] | None,
    value: int,
    compute: Callable[[], Any],
    collect: Callable[[Any], tuple[Any, _Layout]] | None,
) -> Any:
    """Run one denoiser call under the session's protocol; ``collect`` is its data collective, if any.

    The header is posted before ``compute`` and checked after it. The first call of a shape (``key``)
    also confirms every rank's forward before ``collect``; in a pipeline, later calls of that shape
    don't, and a rank whose forward fails joins ``collect`` with zeros of the layout the first call
    recorded, then reports the failure (met at the next exchange, at the latest the end of the run).
    """
    split = collect is not None
    # without a pipeline around the calls (a hand-written loop), nothing after the last call would meet a
    # failure reported late, so every split call confirms; in a pipeline the end-of-run exchange does
    layout = layouts.get(key) if split and session.runs else None
    confirm = split and layout is None
    pending = None
    try:
        pending = session.post_call(value, split, confirm)
        output = compute()
    except BaseException as err:
        if not session.aborted:
            session.fail_call(pending, err, None if layout is None else lambda: _join(layout, group))
        raise
    session.finish_call(pending, confirm=confirm)
    if collect is None:
        return output
    result, recorded = collect(output)
    layouts.setdefault(key, recorded)
    return result


def _runs_whole(module: torch.nn.Module) -> str | None:
    """Why this pipeline call must reach the model whole on every rank, or ``None``.

    - Perturbed-attention guidance (diffusers' ``PAG*`` processors, set by the PAG pipelines for the
      length of a call) batches ``[uncond, cond, perturbed]`` and splits that batch inside the model.
    - diffusers' caches (``enable_cache``: first-block cache, FasterCache, ...) keep state per
      ``cache_context`` and decide from statistics of the whole batch; a rank that sees half of it, or
      one of two calls, would decide differently from one process.
    """
    if any("PAG" in type(getattr(m, "processor", None)).__name__ for m in module.modules()):
        return "perturbed-attention guidance mixes the samples of the batch inside the model"
    for m in module.modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is not None and any(getattr(h, "_is_stateful", False) for h in registry.hooks.values()):
            return "a diffusers cache (enable_cache) decides from the whole batch and keeps state per branch"
    return None


def _check_whole(module: torch.nn.Module) -> bool:
    reason = _runs_whole(module)
    if reason:
        warnings.warn(f"xcfg: {reason}, so xcfg runs every call whole on every rank (same result, no speedup)",
                      stacklevel=4)
    return reason is not None


class _SplitGatherHook(ModelHook):
    """Splits the declared batch inputs across the CFG group and all-gathers the output."""

    def __init__(self, plan: _Plan, group: CFGGroup, session: Session | None) -> None:
        super().__init__()
        self.plan = plan
        self.group = group
        self.session = session
        self.whole = False  # run every call whole this pipeline call: see _runs_whole
        self.layouts = _Layouts()

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        group, plan = self.group, self.plan
        session = None if torch.compiler.is_compiling() else self.session
        if session is None:  # torch.compile traces this path: no control plane, functional collectives
            batch = plan.batch_size(args, kwargs)
            if group.size > 1 and batch is not None and batch % group.size == 0:
                args, kwargs = plan.split(args, kwargs, batch, group.rank, group.size)
                return _gather_output(forward(*args, **kwargs), batch // group.size, group)[0]
            return forward(*args, **kwargs)
        try:
            if session.call == 0:  # processors and caches are set per pipeline call
                self.whole = _check_whole(module)
            batch = plan.batch_size(args, kwargs)
            split = group.size > 1 and not self.whole and batch is not None and batch % group.size == 0
            named = plan.bound(args, kwargs)
            session.check_inputs(named)
            key = _call_key(named) if split else None
        except BaseException as err:
            if not session.aborted:
                session.fail_call(None, err, None)
            raise
        if split:
            args, kwargs = plan.split(args, kwargs, batch, group.rank, group.size)
        return _controlled(
            session,
            group,
            self.layouts.for_run(session.run),
            key,
            -1 if batch is None else batch,
            lambda: forward(*args, **kwargs),
            (lambda output: _gather_output(output, batch // group.size, group)) if split else None,
        )


def _snapshot(value: Any) -> Any:
    """Copy containers (a pipeline may mutate a dict between calls), keep tensors and other leaves."""
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snapshot(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_snapshot(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Whether two argument values are equal: identity first, then values (tensors compared exactly)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        return bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _same_call(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def _exchange(output: Any, group: CFGGroup, layout: _Layout | None = None) -> tuple[Any, Any]:
    """All-gather a two-rank output; return (rank 0's part, rank 1's part) with the output's structure.

    ``layout``, when given, records what was gathered, in order (see :func:`_join`).
    """
    if isinstance(output, torch.Tensor):
        if output.dim() == 0:
            return output, output
        if layout is not None:
            layout.append((output.shape, output.dtype, output.device))
        both = group.all_gather(output)
        return both[: output.shape[0]], both[output.shape[0] :]
    if isinstance(output, (tuple, list)) or isinstance(output, dict):
        items = output.items() if isinstance(output, dict) else enumerate(output)
        pairs = {k: _exchange(v, group, layout) for k, v in items}
        if isinstance(output, dict):
            return (type(output)(**{k: p[0] for k, p in pairs.items()}), type(output)(**{k: p[1] for k, p in pairs.items()}))
        firsts, seconds = [p[0] for p in pairs.values()], [p[1] for p in pairs.values()]
        if hasattr(output, "_fields"):
            return type(output)(*firsts), type(output)(*seconds)
        return type(output)(firsts), type(output)(seconds)
    return output, output


def _output_size(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel()
    if isinstance(output, dict):
        return sum(_output_size(v) for v in output.values())
    if isinstance(output, (tuple, list)):
        return sum(_output_size(v) for v in output)
    return 0


@dataclass
class _History:
    """What the two-call hooks of one pipeline remember of the last step (shared by Wan 2.2's experts)."""

    run: int | None = None
    first: dict[str, Any] | None = None  # the last first call's arguments
    uncond: dict[str, Any] | None = None  # the last second call's arguments
    branch: tuple[str, ...] | None = None  # the arguments that differed within the last pair
    last_role: str = ""


class _TwoCallHook(ModelHook):
    """Runs the cond and uncond calls of a step on two ranks at once.

    A two-call pipeline calls the denoiser twice per step with the same latents and timestep: first
    with the prompt (cond), then with the negative prompt (uncond). The second call's arguments are
    not known when the first call arrives, but across steps they follow a pattern: the arguments that
    differed between the two calls of the previous step (the prompt side) keep their uncond values,
    the rest (latents, timestep, ...) are the first call's. So from the second step on, at the first
    call rank 0 computes the call as given and rank 1 computes the predicted uncond call; the ranks
    exchange the two outputs. When the second call arrives and equals the prediction (checked
    exactly), its output is returned without computing; otherwise every rank computes it, so a wrong
    prediction costs time, never correctness. A step with a single call (CFG off) runs whole on every
    rank, and nothing waits for a call that never comes. The hooks of one ``parallelize`` share their
    history, so Wan 2.2's low-noise expert predicts from the high-noise expert's last step.
    """

    def __init__(self, plan: _Plan, group: CFGGroup, session: Session | None) -> None:
        super().__init__()
        self.plan = plan
        self.group = group
        self.session = session
        self.latent = plan.names[0] if plan.names else "hidden_states"
        self.history = session.shared.setdefault("two_call", _History()) if session is not None else _History()
        self.pending: tuple[dict[str, Any], Any] | None = None  # (predicted second call, its output)
        self.run: int | None = None
        self.whole = False
        self.predictions = 0
        self.layouts = _Layouts()

    def _is_second(self, named: dict[str, Any]) -> bool:
        first = self.history.first
        if self.history.last_role != "first" or first is None:
            return False
        return all(_same(named.get(k), first.get(k)) for k in (self.latent, "timestep"))

    def _prediction(self, named: dict[str, Any]) -> dict[str, Any] | None:
        history = self.history
        if self.group.size != 2 or self.whole or history.branch is None or history.uncond is None:
            return None
        predicted = dict(named)
        for name in history.branch:
            if name in history.uncond:
                predicted[name] = history.uncond[name]
            else:
                predicted.pop(name, None)
        return predicted

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        session = None if torch.compiler.is_compiling() else self.session
        history = self.history
        if session is not None and session.run != self.run:
            self.run, self.pending = session.run, None
            if history.run != session.run:
                self.history.__init__(run=session.run)
        named = self.plan.bound(args, kwargs)
        predicted: dict[str, Any] | None = None
        consumed = False
        try:
            if session is not None:
                if session.call == 0:
                    self.whole = _check_whole(module)
                session.check_inputs(named)
            if self.pending is not None and _same_call(named, self.pending[0]):
                role, consumed = "second", True
            else:
                role = "second" if self._is_second(named) else "first"
                predicted = self._prediction(named) if role == "first" else None
            latent = named.get(self.latent)
            value = latent.shape[0] if isinstance(latent, torch.Tensor) and latent.dim() else -1
            key = _call_key(named) if predicted is not None else None
        except BaseException as err:
            if session is not None and not session.aborted:
                session.fail_call(None, err, None)
            raise

        pending = self.pending
        if consumed:
            compute: Callable[[], Any] = lambda: pending[1]  # noqa: E731 - answered by the prediction
        elif predicted is None:
            compute = lambda: forward(*args, **kwargs)  # noqa: E731
        else:
            local = named if self.group.rank == 0 else predicted
            compute = lambda: forward(**local)  # noqa: E731
        collect = None
        if predicted is not None:

            def collect(output: Any) -> tuple[Any, _Layout]:
                layout: _Layout = []
                return _exchange(output, self.group, layout), layout

        if session is None:
            result = compute()
            result = collect(result)[0] if collect is not None else result
        else:
            result = _controlled(session, self.group, self.layouts.for_run(session.run), key, value, compute, collect)
        if predicted is not None:
            output, uncond_output = result
            self.pending = (_snapshot(predicted), uncond_output)
            self.predictions += 1
        else:
            output = result
        if role == "first":
            history.first = _snapshot(named)
            if predicted is None:
                self.pending = None
        else:
            history.uncond = _snapshot(named)
            first = history.first or {}
            names = set(first) | set(named)
            history.branch = tuple(sorted(n for n in names if not _same(first.get(n), named.get(n))))
            self.pending = None
        history.last_role = role
        return output


class Wrapped:
    """A denoiser with the xcfg wrapper installed; :meth:`remove` restores it.

    Attributes:
        module: the wrapped model.
        spec: the spec it was wrapped with.
        group: the CFG group it splits across.

    Example:
        >>> import torch, xcfg
        >>> spec = xcfg.ModelSpec(model=torch.nn.Linear, batch_inputs=["input"])
        >>> wrapped = xcfg.wrap_denoiser(torch.nn.Linear(3, 3), spec, xcfg.CFGGroup.single())
        >>> wrapped.installed
        True
        >>> wrapped.remove()
        >>> wrapped.installed
        False
    """

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, group: CFGGroup, hook: ModelHook) -> None:
        self.module = module
        self.spec = spec
        self.group = group
        self._hook = hook

    @property
    def installed(self) -> bool:
        """Whether the wrapper is still on the module."""
        registry = getattr(self.module, "_diffusers_hook", None)
        return registry is not None and registry.get_hook(HOOK_NAME) is self._hook

    def remove(self) -> None:
        """Take the wrapper off; the module's ``forward`` is the original again. Idempotent."""
        if self.installed:
            self.module._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)


def is_wrapped(module: torch.nn.Module) -> bool:
    """Whether ``module`` carries an xcfg wrapper."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(HOOK_NAME) is not None


def wrap_denoiser(
    module: torch.nn.Module, spec: ModelSpec, group: CFGGroup, *, session: Session | None = None
) -> Wrapped:
    """Install the split/gather wrapper described by ``spec`` on ``module``.

    This is the factory :func:`xcfg.parallelize` uses for every denoiser it finds; call it directly
    for a model outside a pipeline. The wrapper is a diffusers ``ModelHook`` named ``"xcfg"``, so it
    composes with diffusers' own hooks, and ``inspect.signature(module.forward)`` is unchanged.

    For a :attr:`CFGStyle.BATCHED` spec, per call it binds the arguments to the forward signature
    (positional or keyword), splits every declared batch input when the batch divides by
    ``group.size`` (a batch that does not divide runs whole on every rank), runs the original forward
    on this rank's share, and all-gathers the output along dim 0, returning the type the caller asked
    for. For a :attr:`CFGStyle.TWO_CALL` spec (a group of 2), the two calls of a step run on the two
    ranks at once from the second step on; see the two-call section of the docs.

    Args:
        module: the denoiser.
        spec: its spec; only :attr:`CFGStyle.BATCHED` specs can be installed.
        group: the CFG group; with ``group.size == 1`` the wrapper runs everything locally.
        session: the control protocol shared with the pipeline hooks; ``None`` turns off the cross-rank
            checks (failure propagation, input comparison).

    Returns:
        A :class:`Wrapped` handle.

    Raises:
        SetupError: the module is already wrapped.
        SpecError: the spec does not fit the module's forward signature.

    Example:
        >>> import torch, xcfg
        >>> class Denoiser(torch.nn.Module):
        ...     def forward(self, hidden_states, timestep):
        ...         return hidden_states * timestep[:, None]
        >>> spec = xcfg.ModelSpec(model=Denoiser, batch_inputs=["hidden_states", "timestep"])
        >>> wrapped = xcfg.wrap_denoiser(Denoiser(), spec, xcfg.CFGGroup.single())
        >>> wrapped.module(torch.ones(2, 3), torch.tensor([1.0, 2.0])).tolist()
        [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
        >>> wrapped.remove()
    """
    if spec.style is CFGStyle.NONE:
        raise SetupError(f"xcfg: {spec.name} has no CFG to split: {spec.no_cfg_reason}")
    if spec.style is CFGStyle.TWO_CALL and group.size not in (1, 2):
        raise SetupError(
            f"xcfg: {spec.name} makes two denoiser calls per step (cond, uncond), so its CFG group needs exactly 2 "
            f"ranks, not {group.size}: pass degree=2 (the default) or a group of 2"
        )
    if is_wrapped(module):
        raise SetupError(
            f"xcfg: {type(module).__name__} is already parallelized; call .remove() on the handle parallelize "
            "returned before applying it again"
        )
    hook_class = _TwoCallHook if spec.style is CFGStyle.TWO_CALL else _SplitGatherHook
    hook = hook_class(_Plan(spec, type(module)), group, session)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
    return Wrapped(module, spec, group, hook)
