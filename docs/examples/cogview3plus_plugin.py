"""CogView3-Plus (``CogView3PlusPipeline``): an xcfg plugin written as the plugin guide describes.

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (B, C, H, W), ``encoder_hidden_states`` (B, L, D),
``timestep`` (B,) and the three SDXL-style size conditions ``original_size``, ``target_size`` and
``crop_coords`` (B, 2), which the pipeline doubles for CFG like the latents. Nothing else is passed.
"""

from __future__ import annotations

from typing import Any

import torch

import xcfg

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        # a lazy "module:Class" path: registering the spec does not import diffusers
        model="diffusers.models.transformers.transformer_cogview3plus:CogView3PlusTransformer2DModel",
        batch_inputs=[
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            "original_size",
            "target_size",
            "crop_coords",
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            out_channels=4, text_embed_dim=16, time_embed_dim=8, condition_dim=4, pos_embed_max_size=16,
            sample_size=16,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2,
        ),
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=5.0),
        "text": (8, 16),  # prompt length and width of the text embeddings
        "description": "CogView3-Plus, tiny (2 layers), 32x32",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A CogView3-Plus pipeline with random weights and random prompt embeddings, the same on every rank."""
    from diffusers import AutoencoderKL, CogVideoXDDIMScheduler, CogView3PlusPipeline, CogView3PlusTransformer2DModel

    if size not in CONFIGS:
        raise ValueError(f"size must be one of {tuple(CONFIGS)}, got {size!r}")
    config = CONFIGS[size]
    device = torch.device(device or "cpu")
    dtype = dtype or torch.float32

    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), device:  # the same seed on every rank: the same random weights
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            pipe = CogView3PlusPipeline(
                tokenizer=None,
                text_encoder=None,  # the example passes prompt embeddings instead
                transformer=CogView3PlusTransformer2DModel(**config["transformer"]),
                vae=AutoencoderKL(**config["vae"]),
                scheduler=CogVideoXDDIMScheduler(),
            )
        finally:
            torch.set_default_dtype(previous)

    # Random prompt embeddings, seeded so every rank has the same. Without a negative prompt the pipeline
    # uses zeros for the uncond branch, so no negative embeddings are passed.
    length, width = config["text"]
    generator = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(config["call"], prompt_embeds=torch.randn(1, length, width, generator=generator).to(device, dtype))
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(
        name="cogview3plus",
        summary="CogView3-Plus text-to-image (batched CFG), from the plugin guide",
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
