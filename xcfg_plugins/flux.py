"""Flux.1 (``FluxPipeline`` and its variants): refused.

Flux.1-dev and -schnell are guidance-distilled: the pipeline evaluates the transformer once per step
on the prompt alone, with the guidance strength fed in as an input (``guidance``), so there is no
uncond/cond batch to split across ranks.
"""

from __future__ import annotations

from typing import Any

import xcfg

# -- specs -------------------------------------------------------------------------------------------

NO_CFG_REASON = (
    "Flux.1 is guidance-distilled: FluxPipeline runs the transformer once per step on the prompt alone, with the "
    "guidance scale fed in as the `guidance` input, so there is no uncond/cond batch to split across GPUs. Split the "
    "sequence instead (diffusers' context parallelism: transformer.enable_parallelism(config=ContextParallelConfig(...)))."
)

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_flux:FluxTransformer2DModel",
        style="none",
        no_cfg_reason=NO_CFG_REASON,
    ),
)

# -- examples ----------------------------------------------------------------------------------------

EXAMPLES: tuple[xcfg.Example, ...] = ()

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in SPECS:
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
