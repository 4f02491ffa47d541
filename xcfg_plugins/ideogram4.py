"""Ideogram 4 (``Ideogram4Pipeline``): asymmetric CFG on two denoisers, refused with the reason.

Each step the pipeline runs ``transformer`` on the packed text+image sequence (the cond prediction) and
``unconditional_transformer``, a second model with its own weights, on the image tokens alone with zeroed text
features (the uncond prediction), then mixes them with a per-step guidance weight. Each module makes one call per
step, with other inputs than the other, so there is neither a batch to split nor a cond/uncond pair on one module
for two-call prediction: both ranks would compute every call. What would fit is running the two models on two GPUs
at once (one model per GPU), which xcfg has no mode for; ``refuse`` says so instead of running at one GPU's speed.
"""

from __future__ import annotations

from typing import Any

import xcfg

# -- specs -------------------------------------------------------------------------------------------

REASON = (
    "Ideogram4Pipeline runs its cond and uncond predictions on two different models (transformer, then "
    "unconditional_transformer, with other inputs), each called once per step: there is no CFG batch to split and no "
    "cond/uncond pair on one model to run on two GPUs. xcfg has no 'one model per GPU' mode; split the sequence across "
    "GPUs instead (diffusers' context parallelism), or place the two models on two GPUs yourself."
)


def refuse(pipe: Any, module: Any) -> str | None:
    """Always: whichever pipeline drives it, this transformer is one half of an asymmetric CFG pair."""
    return REASON


SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_ideogram4:Ideogram4Transformer2DModel",
        style="two_call",
        refuse=refuse,
    ),
)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in SPECS:
        register(spec)
