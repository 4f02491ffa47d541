"""Allegro (``AllegroPipeline``).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (B, C, F, H, W), ``encoder_hidden_states``
(B, 1, L, D: the pipeline adds a singleton dimension), ``encoder_attention_mask`` (B, L),
``timestep`` (B,) and ``attention_mask`` (B, F, H, W) when a caller gives one.
``image_rotary_emb`` is shared: the pipeline builds it once per call as
``((freqs_t, freqs_h, freqs_w), (grid_t, grid_h, grid_w))`` with no batch dimension.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_allegro:AllegroTransformer3DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep", "attention_mask", "encoder_attention_mask"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # attention_head_dim 12: the 3D RoPE splits each head into three equal parts
        "transformer": dict(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=2,
            cross_attention_dim=24, sample_width=4, sample_height=4, sample_frames=2, caption_channels=16,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("AllegroDownBlock3D",) * 4,
            up_block_types=("AllegroUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ),
        "call": dict(height=32, width=32, num_frames=8, num_inference_steps=4, guidance_scale=7.5, max_sequence_length=8),
        "text": (8, 16),
        "description": "Allegro, tiny (2 layers), 8 frames 32x32",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """An Allegro pipeline with random weights and random prompt embeddings."""
    import torch
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]
    call = config["call"]

    def make() -> Any:
        vae = AutoencoderKLAllegro(**config["vae"])
        # Allegro's VAE decodes only in tiles of a fixed size (24 frames, ``sample_size`` pixels, with a fixed
        # overlap) and has no untiled path; a tiny video is smaller than one tile, so make one tile the video.
        vae.enable_tiling()
        vae.kernel = vae.stride = (call["num_frames"], call["height"], call["width"])
        # its temporal convolutions have dropout 0.1 built in: evaluation mode, as from_pretrained leaves it
        vae.eval()
        return AllegroPipeline(
            transformer=AllegroTransformer3DModel(**config["transformer"]),
            vae=vae,
            scheduler=DDIMScheduler(),
            text_encoder=None,
            tokenizer=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = dict(call)
    kwargs.update(
        _common.embeddings(seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width))
    )
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
    # negative_prompt defaults to "", which the pipeline refuses next to negative_prompt_embeds
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask.clone(), negative_prompt=None)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(name="allegro", summary="Allegro text-to-video (batched CFG)", build=build, sizes=tuple(CONFIGS)),
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
