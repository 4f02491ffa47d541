"""A spec's batch inputs bound to one class's ``forward`` signature: read, measured and cut by name."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import ShapeError, SpecError
from ._spec import BatchInput, ModelSpec
from ._tree import tree_leaves, tree_map

__all__ = ["Binding", "check_inputs", "forward_parameters", "share_of"]


@functools.lru_cache(maxsize=None)
def _parameters(cls: type) -> tuple[tuple[str, inspect.Parameter], ...]:
    params = dict(inspect.signature(cls.forward).parameters)
    params.pop("self", None)
    return tuple(params.items())


def forward_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The parameters of ``cls.forward`` without ``self`` (cached per class)."""
    return dict(_parameters(cls))


def check_inputs(spec: ModelSpec, cls: type) -> None:
    """Check that every declared batch input is a parameter of ``cls.forward``.

    Raises:
        SpecError: naming the field, the argument and the parameters that exist.
    """
    params = forward_parameters(cls)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for index, item in enumerate(spec.batch_inputs):
        if item.name not in params:
            raise SpecError(
                f"spec for {spec.path}: field 'batch_inputs.{index}.name': {item.name!r} is not a parameter of "
                f"{cls.__name__}.forward{inspect.signature(cls.forward)}"
            )


def share_of(batch: int, rank: int, size: int) -> slice:
    """The samples of a batch that ``rank`` computes: an equal, contiguous share (``batch % size == 0``)."""
    share = batch // size
    return slice(rank * share, (rank + 1) * share)


@dataclass(frozen=True)
class _Slot:
    """Where one batch input sits in a call: its keyword name and, if it can be positional, its index."""

    item: BatchInput
    index: int | None


class Binding:
    """A list of batch inputs bound to one class's forward signature.

    Args:
        inputs: the batch inputs (a spec's, or inferred ones).
        cls: the model class whose ``forward`` the calls go to.
    """

    def __init__(self, inputs: tuple[BatchInput, ...], cls: type) -> None:
        params = forward_parameters(cls)
        positional = [
            name
            for name, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        self.names = tuple(positional)
        self.slots = tuple(
            _Slot(item, positional.index(item.name) if item.name in positional else None) for item in inputs
        )

    @classmethod
    def of(cls, spec: ModelSpec, model_class: type) -> Binding:
        """The binding of a spec's batch inputs, after checking them against the signature."""
        check_inputs(spec, model_class)
        return cls(spec.batch_inputs, model_class)

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
        """The batch of this call, from the first batch input that has one; checks the others.

        Raises:
            ShapeError: a batch input has a size at its batch dimension that is neither the batch nor 1.
        """
        batch: int | None = None
        first = ""
        for slot in self.slots:
            for size in _sizes(slot.item, self._get(slot, args, kwargs)):
                if batch is None:
                    batch, first = size, slot.item.label
                elif size not in (batch, 1):
                    raise ShapeError(
                        f"xcfg: {slot.item.label} has size {size} at its batch dimension {slot.item.dim}, but {first} "
                        f"has batch {batch}. Every batch argument must carry the same batch (or 1 to broadcast); if "
                        "this argument is shared by all samples, remove it from the spec's batch_inputs."
                    )
        return batch

    def split(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], batch: int, rank: int, size: int
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """This rank's share of every batch input; everything else unchanged and in the same form."""
        part = share_of(batch, rank, size)
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
            if item.key is None:
                holder[where] = _cut(item, value, batch, part)
            elif isinstance(value, dict) and item.key in value:
                holder[where] = {**value, item.key: _cut(item, value[item.key], batch, part)}
        return tuple(args_list), kwargs


def _sizes(item: BatchInput, value: Any) -> list[int]:
    if value is None:
        return []
    if item.per_sample:
        return [len(value)] if isinstance(value, (list, tuple)) else []
    return [
        leaf.shape[item.dim]
        for _, leaf in tree_leaves(value)
        if isinstance(leaf, torch.Tensor) and leaf.dim() > item.dim
    ]


def _cut(item: BatchInput, value: Any, batch: int, part: slice) -> Any:
    if item.per_sample:
        if isinstance(value, (list, tuple)) and len(value) == batch:
            return type(value)(value[part])
        return value

    def narrow(leaf: Any, _label: str) -> Any:
        if not isinstance(leaf, torch.Tensor) or leaf.dim() <= item.dim or leaf.shape[item.dim] != batch:
            return leaf  # a scalar or a broadcast (size 1) input: every rank takes it whole
        return leaf.narrow(item.dim, part.start, part.stop - part.start)

    return tree_map(narrow, value)
