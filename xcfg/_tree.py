"""The one walker over nested arguments and outputs: tensors inside dicts, lists, tuples, namedtuples and
dataclasses (diffusers' ``BaseOutput`` is both a dataclass and an ordered dict).

Every place in xcfg that looks inside a forward's arguments or output goes through :func:`tree_map` or
:func:`tree_leaves`, so they agree on what a container is and rebuild each one as the type it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["is_namedtuple", "tree_leaves", "tree_map"]


def is_namedtuple(value: Any) -> bool:
    """Whether ``value`` is an instance of a ``collections.namedtuple`` / ``typing.NamedTuple`` class."""
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _children(value: Any) -> tuple[str, list[tuple[Any, Any]]] | None:
    """``(kind, [(key, child), ...])`` for a container, ``None`` for a leaf."""
    if isinstance(value, dict):  # includes BaseOutput (an OrderedDict dataclass): its set fields
        return "dict", list(value.items())
    if is_namedtuple(value):
        return "namedtuple", list(zip(type(value)._fields, value))
    if isinstance(value, (list, tuple)):
        return "sequence", list(enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "dataclass", [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None


def _rebuild(value: Any, kind: str, items: list[tuple[Any, Any]]) -> Any:
    if kind == "dict":
        if dataclasses.is_dataclass(value):  # BaseOutput: its constructor takes the fields by name
            return type(value)(**dict(items))
        out = type(value)() if type(value) is not dict else {}
        try:
            out.update(items)
        except TypeError:  # a dict subclass whose constructor needs arguments
            out = dict(items)
        return out
    if kind == "namedtuple":
        return type(value)(*(child for _, child in items))
    if kind == "sequence":
        children = [child for _, child in items]
        return type(value)(children) if type(value) in (list, tuple) else _sequence_like(value, children)
    return dataclasses.replace(value, **dict(items))


def _sequence_like(value: Any, children: list[Any]) -> Any:
    try:
        return type(value)(children)
    except TypeError:
        return list(children) if isinstance(value, list) else tuple(children)


def tree_map(fn: Callable[[Any, str], Any], value: Any, label: str = "", *, stop: Callable[[Any], bool] | None = None) -> Any:
    """Apply ``fn(leaf, label)`` to every leaf of ``value``; rebuild the containers as their own types.

    Args:
        fn: called with each leaf (a tensor, or any non-container value) and its label, a path such as
            ``added_cond_kwargs['time_ids']`` or ``down_block_additional_residuals[3]``.
        value: the nested value.
        label: the label of ``value`` itself.
        stop: containers for which it returns ``True`` are passed to ``fn`` whole instead of walked.

    Example:
        >>> import torch
        >>> from xcfg._tree import tree_map
        >>> tree_map(lambda t, _: t * 2 if isinstance(t, torch.Tensor) else t, {"a": [torch.ones(1), 3]})
        {'a': [tensor([2.]), 3]}
    """
    if stop is not None and stop(value):
        return fn(value, label)
    found = _children(value)
    if found is None:
        return fn(value, label)
    kind, items = found
    mapped = [(key, tree_map(fn, child, _join(label, kind, key), stop=stop)) for key, child in items]
    return _rebuild(value, kind, mapped)


def tree_leaves(value: Any, label: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of ``value`` with its label, depth first, in container order.

    Example:
        >>> import torch
        >>> from xcfg._tree import tree_leaves
        >>> [name for name, _ in tree_leaves({"x": (torch.ones(1), None)}, "kwargs")]
        ["kwargs['x'][0]", "kwargs['x'][1]"]
    """
    found = _children(value)
    if found is None:
        yield label, value
        return
    kind, items = found
    for key, child in items:
        yield from tree_leaves(child, _join(label, kind, key))


def tensors(value: Any, label: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The tensor leaves of ``value`` with their labels."""
    return ((name, leaf) for name, leaf in tree_leaves(value, label) if isinstance(leaf, torch.Tensor))


def _join(label: str, kind: str, key: Any) -> str:
    if kind in ("namedtuple", "dataclass"):
        return f"{label}.{key}" if label else str(key)
    if kind == "dict":
        return f"{label}[{key!r}]"
    return f"{label}[{key}]"
