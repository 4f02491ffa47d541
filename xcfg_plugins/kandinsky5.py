"""Kandinsky 5: text-to-video, image-to-video, text-to-image and image-to-image (``Kandinsky5T2VPipeline``,
``Kandinsky5I2VPipeline``, ``Kandinsky5T2IPipeline``, ``Kandinsky5I2IPipeline``).

The pipelines evaluate CFG in two calls per step at batch B when ``guidance_scale > 1`` and negative embeddings
exist, without ``cache_context``: the transformer runs on the prompt, then on the negative prompt, and the
prediction is ``uncond + scale * (cond - uncond)``. Between the two calls ``encoder_hidden_states`` (Qwen2.5-VL
embeddings), ``pooled_projections`` (CLIP) and ``text_rope_pos`` (the positions of each branch's text tokens,
``arange`` of its length) differ; ``hidden_states`` (latents, with the visual condition and its mask in the
channels for I2V), ``timestep``, ``visual_rope_pos``, ``scale_factor`` and ``sparse_params`` are the same in both.
So the uncond call is predicted exactly from the second step on and the two calls of a step run on the two ranks
at once. With ``guidance_scale <= 1`` a step makes one call, which every rank computes.

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_kandinsky:Kandinsky5Transformer3DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

_SCHEDULER = dict(shift=7.0)  # as diffusers' Kandinsky 5 pipeline tests build it

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
            model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(1, 1, 2), visual_cond=False,
            attention_type="regular",
        ),
        "vae": dict(
            act_fn="silu", block_out_channels=[8, 8], down_block_types=["HunyuanVideoDownBlock3D"] * 2, in_channels=3,
            latent_channels=4, layers_per_block=1, mid_block_add_attention=False, norm_num_groups=2, out_channels=3,
            scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
            up_block_types=["HunyuanVideoUpBlock3D"] * 2,
        ),
        "scheduler": _SCHEDULER,
        "call": dict(height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=5.0),
        # (prompt tokens, negative prompt tokens, Qwen width, CLIP pooled width)
        "text": (8, 6, 32, 16),
        "description": "Kandinsky 5 T2V, tiny (1+2 blocks), 5 frames 32x32",
    },
    # kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers (the pipeline docstring's checkpoint): the transformer as
    # the Kandinsky 5 repository's default Lite config gives it (its get_default_conf: model_dim 1792, ff_dim 7168,
    # 2 text and 32 visual blocks, axes (16, 24, 24), visual_cond, Qwen2.5-VL 3584 and CLIP 768 text widths; the
    # 5 s models use regular attention): 2.01B parameters. The HunyuanVideo VAE (AutoencoderKLHunyuanVideo's
    # defaults: 16 latent channels, scaling 0.476986). 121 frames 512x768, 50 steps at guidance 5.0 (the pipeline's
    # defaults and diffusers' Lite example); prompts of max_sequence_length 512. The scheduler is the tiny example's
    # (shift 7.0, diffusers' test value): the published scheduler config was not found; the shift moves the
    # timesteps, not the cost of a step.
    "full": {
        "transformer": dict(
            in_visual_dim=16, in_text_dim=3584, in_text_dim2=768, time_dim=512, out_visual_dim=16, patch_size=(1, 2, 2),
            model_dim=1792, ff_dim=7168, num_text_blocks=2, num_visual_blocks=32, axes_dims=(16, 24, 24),
            visual_cond=True, attention_type="regular",
        ),
        "vae": {},
        "scheduler": _SCHEDULER,
        "call": dict(
            height=512, width=768, num_frames=121, num_inference_steps=50, guidance_scale=5.0, max_sequence_length=512,
        ),
        "text": (512, 512, 3584, 768),
        "description": "Kandinsky 5.0 T2V Lite (2B), 121 frames 512x768",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"kandinsky5": {"transformer": 2.01e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Kandinsky 5 text-to-video pipeline with random weights and random prompt embeddings (Qwen and CLIP, with
    the cumulative sequence lengths the pipeline expects), CFG on."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        Kandinsky5T2VPipeline,
        Kandinsky5Transformer3DModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS:
        raise ValueError(f"the Kandinsky 5 example has no size {size!r}")
    config = CONFIGS[size]

    def make() -> Any:
        return Kandinsky5T2VPipeline(
            transformer=Kandinsky5Transformer3DModel(**config["transformer"]),
            vae=AutoencoderKLHunyuanVideo(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, negative, width, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds_qwen=(1, length, width), prompt_embeds_clip=(1, pooled),
            negative_prompt_embeds_qwen=(1, negative, width), negative_prompt_embeds_clip=(1, pooled),
        )
    )
    kwargs.update(
        prompt_cu_seqlens=torch.tensor([0, length], dtype=torch.int32, device=device),
        negative_prompt_cu_seqlens=torch.tensor([0, negative], dtype=torch.int32, device=device),
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="kandinsky5", summary="Kandinsky 5 text-to-video (two-call CFG, no cache_context)", build=build,
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
