"""Mochi 1 (``MochiPipeline``).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (B, C, F, H, W), ``encoder_hidden_states``,
``timestep`` and ``encoder_attention_mask`` (B, L).
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_mochi:MochiTransformer3DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
            in_channels=12, out_channels=12, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4,
            activation_fn="swiglu", max_sequence_length=8,
        ),
        "vae": dict(
            latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        ),
        "call": dict(height=16, width=16, num_frames=7, num_inference_steps=4, guidance_scale=4.5, max_sequence_length=8),
        "text": (8, 16),
        "description": "Mochi, tiny (2 layers), 7 frames 16x16",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Mochi pipeline with random weights and random prompt embeddings."""
    import torch
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return MochiPipeline(
            transformer=MochiTransformer3DModel(**config["transformer"]),
            vae=AutoencoderKLMochi(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder=None,
            tokenizer=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width))
    )
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask.clone())
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(name="mochi", summary="Mochi 1 text-to-video (batched CFG)", build=build, sizes=tuple(CONFIGS)),
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
