"""The split/gather forward wrapper: from a spec and a CFG group, a named, removable hook on a denoiser."""

from __future__ import annotations

import functools
import inspect
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


def _gather_output(output: Any, share: int, group: CFGGroup) -> Any:
    """All-gather every output tensor whose leading dimension is this rank's share; keep the type."""
    if isinstance(output, torch.Tensor):
        return group.all_gather(output) if output.dim() > 0 and output.shape[0] == share else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(_gather_output(v, share, group) for v in output))
    if isinstance(output, (tuple, list)):
        return type(output)(_gather_output(v, share, group) for v in output)
    if isinstance(output, dict):
        return type(output)(**{k: _gather_output(v, share, group) for k, v in output.items()})
    return output


class _SplitGatherHook(ModelHook):
    """Splits the declared batch inputs across the CFG group and all-gathers the output."""

    def __init__(self, plan: _Plan, group: CFGGroup, session: Session | None) -> None:
        super().__init__()
        self.plan = plan
        self.group = group
        self.session = session

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        group, plan = self.group, self.plan
        session = None if torch.compiler.is_compiling() else self.session
        batch: int | None = None
        split = False
        try:
            batch = plan.batch_size(args, kwargs)
            split = group.size > 1 and batch is not None and batch % group.size == 0
            if session is not None:
                session.check_inputs(plan.bound(args, kwargs))
            if split:
                args, kwargs = plan.split(args, kwargs, batch, group.rank, group.size)
            output = forward(*args, **kwargs)
        except BaseException as err:
            if session is not None and not session.aborted:
                session.after_call(-1 if batch is None else batch, split, err)
            raise
        if session is not None:
            session.after_call(-1 if batch is None else batch, split, None)
        if split:
            output = _gather_output(output, batch // group.size, group)
        return output


class Wrapped:
    """A denoiser with the xcfg wrapper installed; :meth:`remove` restores it.

    Attributes:
        module: the wrapped model.
        spec: the spec it was wrapped with.
        group: the CFG group it splits across.
    """

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, group: CFGGroup, hook: _SplitGatherHook) -> None:
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

    Per call it binds the arguments to the forward signature (positional or keyword), splits every
    declared batch input when the batch divides by ``group.size`` (a batch that does not divide runs
    whole on every rank), runs the original forward on this rank's share, and all-gathers the output
    along dim 0, returning the type the caller asked for.

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
    if spec.style is not CFGStyle.BATCHED:
        raise SetupError(f"xcfg: {spec.name} has CFG style {spec.style.value!r}; only 'batched' models can be wrapped")
    if is_wrapped(module):
        raise SetupError(
            f"xcfg: {type(module).__name__} is already parallelized; call .remove() on the handle parallelize "
            "returned before applying it again"
        )
    hook = _SplitGatherHook(_Plan(spec, type(module)), group, session)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
    return Wrapped(module, spec, group, hook)
