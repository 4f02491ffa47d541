"""The minimal "seed-style" split/gather wrapper: the baseline that DESIGN.md's numbers to beat came from.

It is what one writes in an afternoon, and what xcfg must never be slower than: ``functools.wraps``
around ``transformer.forward``, the batch arguments (passed by keyword, as the CogVideoX, SD3 and
Mochi pipelines do) cut in halves by rank, the original forward on this rank's half, and one
``all_gather_into_tensor`` of the prediction. No argument binding, no checks, no control messages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["BATCH_ARGUMENTS", "install"]

# torch 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

BATCH_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "CogVideoXTransformer3DModel": ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"),
    "SD3Transformer2DModel": ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"),
    "MochiTransformer3DModel": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"),
}
"""Forward arguments that carry the CFG batch, by denoiser class (DESIGN.md's table)."""


def install(transformer: torch.nn.Module, group: Any = None) -> Callable[[], None]:
    """Wrap ``transformer.forward`` to split the CFG batch across ``group`` (default: the world).

    Returns:
        A function that removes the wrapper.
    """
    names = BATCH_ARGUMENTS[type(transformer).__name__]
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    original = transformer.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        batch = kwargs["hidden_states"].shape[0]
        if batch % world:
            return original(*args, **kwargs)
        share = batch // world
        for name in names:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                kwargs[name] = value[rank * share : (rank + 1) * share]
        output = original(*args, **kwargs)
        sample = output[0] if isinstance(output, tuple) else output.sample
        gathered = sample.new_empty((batch, *sample.shape[1:]))
        _all_gather_single(gathered, sample.contiguous(), group=group)
        if isinstance(output, tuple):
            return (gathered, *output[1:])
        output.sample = gathered
        return output

    transformer.forward = forward

    def remove() -> None:
        if transformer.__dict__.get("forward") is forward:
            del transformer.forward

    return remove
