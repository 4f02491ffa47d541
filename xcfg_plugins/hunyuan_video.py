"""HunyuanVideo: text-to-video (``HunyuanVideoPipeline``) with true CFG.

HunyuanVideo is guidance-distilled (``guidance_embeds=True``): the pipeline feeds the guidance strength in
as the ``guidance`` input and by default (``true_cfg_scale=1.0``) runs the transformer once per step on
the prompt alone, so there is no uncond call to run on another rank. ``parallelize`` refuses it unless
called with ``true_cfg=True``.

With negative prompt embeddings (``negative_prompt_embeds`` and ``negative_pooled_prompt_embeds``) and
``true_cfg_scale > 1``, the pipeline runs true CFG in two calls per step at batch B: the transformer runs
on the prompt inside ``cache_context("cond")``, then on the negative prompt inside
``cache_context("uncond")``, and combines ``uncond + s * (cond - uncond)``. Between the two calls
``encoder_hidden_states``, ``encoder_attention_mask`` (both may differ in length) and
``pooled_projections`` differ. ``hidden_states``, ``timestep``, ``guidance`` and ``attention_kwargs`` are
the same objects, so the uncond call is predicted exactly from the second step on and the two calls of a
step run on the two ranks at once. Without true CFG a step makes one call, which every rank computes.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

NO_CFG_REASON = (
    "HunyuanVideo is guidance-distilled (guidance_embeds=True): HunyuanVideoPipeline runs the transformer once per "
    "step on the prompt alone, with the guidance scale fed in as the `guidance` input, so there is no uncond call "
    "to run on another GPU."
)

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_hunyuan_video:HunyuanVideoTransformer3DModel",
        style="two_call",
        guidance_distilled=lambda module: bool(module.config.guidance_embeds),
        no_cfg_reason=NO_CFG_REASON,
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
        ),
        "scheduler": dict(shift=7.0),
        "call": dict(height=32, width=32, num_frames=5, num_inference_steps=4, true_cfg_scale=4.0, guidance_scale=6.0,
                     max_sequence_length=8),
        # (prompt tokens, negative prompt tokens, width, pooled width)
        "text": (8, 6, 16, 8),
        "description": "HunyuanVideo, tiny (1+1 layers), 5 frames 32x32",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A HunyuanVideo pipeline with random weights, random prompt embeddings and masks, and true CFG.

    The transformer is guidance-distilled like the published model: parallelize it with
    ``xcfg.parallelize(pipe, true_cfg=True)``.
    """
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return HunyuanVideoPipeline(
            text_encoder=None,
            tokenizer=None,
            transformer=HunyuanVideoTransformer3DModel(**config["transformer"]),
            vae=AutoencoderKLHunyuanVideo(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
            text_encoder_2=None,
            tokenizer_2=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, negative_length, width, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), pooled_prompt_embeds=(1, pooled),
            negative_prompt_embeds=(1, negative_length, width), negative_pooled_prompt_embeds=(1, pooled),
        )
    )
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
    negative_mask = torch.ones(1, negative_length, dtype=torch.long, device=device)
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=negative_mask)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="hunyuan-video",
        summary="HunyuanVideo (guidance-distilled) with true CFG: parallelize(pipe, true_cfg=True) (two-call CFG)",
        build=build,
        sizes=tuple(CONFIGS),
    ),
)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in SPECS:
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
