"""Putting outputs back together across the CFG group, and the value helpers the styles share.

- :func:`gather_output`: a split call's output, every tensor of this rank's share all-gathered into the
  whole batch (batched style).
- :func:`exchange_pair`: two ranks' outputs of two different calls, each rank receiving both (two-call style).
"""

from __future__ import annotations

from typing import Any

import torch

from ._errors import ShapeError
from ._group import CFGGroup
from ._tree import tree_leaves, tree_map

__all__ = ["Layout", "call_key", "exchange_pair", "gather_output", "same", "same_call", "snapshot"]

Layout = list[tuple[torch.Size, torch.dtype, torch.device]]
"""What a call's data collectives gathered, in order: one (shape, dtype, device) per all-gather."""


def gather_output(output: Any, share: int, group: CFGGroup, *, per_sample: bool = False) -> tuple[Any, Layout]:
    """All-gather every output tensor whose leading dimension is this rank's share; keep the types.

    With ``per_sample``, a list of ``share`` tensors (one per sample, as Z-Image returns) is gathered
    into the list of the whole batch.

    Returns:
        The gathered output and its layout.

    Raises:
        ShapeError: no output tensor has this rank's share as its batch, so the model did not compute
            on the split batch alone: an argument carrying the batch is missing from the spec.
    """
    layout: Layout = []

    def gather(value: Any) -> torch.Tensor:
        layout.append((value.shape, value.dtype, value.device))
        return group.all_gather(value)

    def per_leaf(value: Any, _label: str) -> Any:
        if per_sample and _is_sample_list(value, share):
            return list(gather(torch.stack(list(value))).unbind(0))
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == share:
            return gather(value)
        return value

    result = tree_map(per_leaf, output, stop=(lambda v: _is_sample_list(v, share)) if per_sample else None)
    if not layout and output_size(output):
        raise ShapeError(
            f"xcfg: the model returned no output of this rank's batch share ({share}) after its batch was split: a "
            "forward argument that carries the batch is probably missing from the spec's batch_inputs (it reached the "
            "model whole and broadcast the batch back). Declare it, or check the spec with xcfg.testing.check_example."
        )
    return result, layout


def _is_sample_list(value: Any, share: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == share
        and all(isinstance(v, torch.Tensor) for v in value)
        and len({tuple(v.shape) for v in value}) == 1
    )


def exchange_pair(output: Any, group: CFGGroup) -> tuple[tuple[Any, Any], Layout]:
    """All-gather a two-rank output; return (rank 0's output, rank 1's output) with the output's structure,
    and the layout of what was gathered."""
    layout: Layout = []
    halves: list[list[Any]] = [[], []]

    def gather(value: Any, _label: str) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            layout.append((value.shape, value.dtype, value.device))
            both = group.all_gather(value)
            halves[0].append(both[: value.shape[0]])
            halves[1].append(both[value.shape[0] :])
        return value

    tree_map(gather, output)
    picks = [iter(h) for h in halves]

    def rebuild(which: int) -> Any:
        def pick(value: Any, _label: str) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return next(picks[which])
            return value

        return tree_map(pick, output)

    return (rebuild(0), rebuild(1)), layout


def output_size(output: Any) -> int:
    """The number of tensor elements in an output."""
    return sum(leaf.numel() for _, leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor))


def call_key(named: dict[str, Any]) -> tuple[Any, ...]:
    """What determines a call's output layout: every tensor's shape and dtype, and the plain values."""
    key: list[Any] = []
    for label, leaf in tree_leaves(named):
        if isinstance(leaf, torch.Tensor):
            key.append((label, tuple(leaf.shape), leaf.dtype))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            key.append((label, leaf))
    return tuple(key)


def snapshot(value: Any) -> Any:
    """Copy the containers (a pipeline may mutate a dict between calls), keep tensors and other leaves."""
    return tree_map(lambda leaf, _label: leaf, value)


def same(a: Any, b: Any) -> bool:
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
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def same_call(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two calls' arguments (by name) are equal, by :func:`same`."""
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def close(a: Any, b: Any, tolerance: float) -> bool:
    """Whether two outputs have the same structure and every tensor pair is within ``tolerance``
    (relative error ``‖a − b‖ / ‖b‖`` in float64)."""
    left, right = list(tree_leaves(a)), list(tree_leaves(b))
    if [name for name, _ in left] != [name for name, _ in right]:
        return False
    for (_, x), (_, y) in zip(left, right):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not isinstance(x, torch.Tensor):
            continue
        if x.shape != y.shape:
            return False
        x64, y64 = x.detach().double(), y.detach().double()
        if not bool(torch.isfinite(x64).all()) or not bool(torch.isfinite(y64).all()):
            if not bool(torch.equal(x64.nan_to_num(), y64.nan_to_num())):
                return False
            continue
        if float((x64 - y64).norm()) > tolerance * max(float(y64.norm()), 1e-30):
            return False
    return True
