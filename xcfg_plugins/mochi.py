"""Mochi 1 (``MochiPipeline``).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (B, C, F, H, W), ``encoder_hidden_states``,
``timestep`` and ``encoder_attention_mask`` (B, L).
"""

from __future__ import annotations

from typing import Any

import torch

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
    # genmo/mochi-1-preview: transformer/config.json (10.0B parameters), vae/config.json (460M: the 362M decoder
    # and the 97M encoder) and scheduler/scheduler_config.json. Published size 848x480; 49 frames (13 latent
    # frames) keeps a 1-GPU and a 2-GPU run inside one 10-minute benchmark call (the pipeline's default is 19).
    # T5 embeddings (256, 4096) with their attention mask.
    "full": {
        "transformer": dict(
            patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48, pooled_projection_dim=1536,
            in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=4096, time_embed_dim=256,
            activation_fn="swiglu", max_sequence_length=256,
        ),
        "vae": dict(
            in_channels=15, out_channels=3, encoder_block_out_channels=(64, 128, 256, 384),
            decoder_block_out_channels=(128, 256, 512, 768), latent_channels=12, layers_per_block=(3, 3, 4, 6, 3),
            act_fn="silu", temporal_expansions=(1, 2, 3), spatial_expansions=(2, 2, 2),
            add_attention_block=(False, True, True, True, True), scaling_factor=1.0,
        ),
        "scheduler": dict(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=True,
        ),
        "call": dict(height=480, width=848, num_frames=49, num_inference_steps=64, guidance_scale=4.5, max_sequence_length=256),
        "text": (256, 4096),
        "description": "Mochi-1, 49 frames 480x848",
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
            scheduler=FlowMatchEulerDiscreteScheduler(**config.get("scheduler", {})),
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

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: torch.Tensor, pmap: xcfg.PMap) -> torch.Tensor | None:
    """``AutoencoderKLMochi.tiled_decode(z).sample`` with the tiles decoded across the CFG ranks.

    The latent (B, C, F, H, W) is cut into overlapping spatial tiles of ``tile_sample_min_*`` pixels,
    ``tile_sample_stride_*`` pixels apart (divided by the spatial compression for the latent). Each tile is
    decoded with all its frames, at once or, with framewise decoding, in latent frame batches carrying the
    convolutions' cache; the first ``temporal_compression_ratio - 1`` frames are dropped as the VAE does.
    ``pmap`` spreads the tiles by area; every rank that receives them blends each tile with the one above
    and the one to its left, keeps a stride of it, and crops the result to the sample size.
    """
    height, width = z.shape[-2:]
    ratio = vae.spatial_compression_ratio
    tile = (vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio)
    step = (vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio)
    blend = (
        vae.tile_sample_min_height - vae.tile_sample_stride_height,
        vae.tile_sample_min_width - vae.tile_sample_stride_width,
    )
    keep = (vae.tile_sample_stride_height, vae.tile_sample_stride_width)
    tops, lefts = range(0, height, step[0]), range(0, width, step[1])
    columns = len(lefts)
    tiles = [z[..., i : i + tile[0], j : j + tile[1]] for i in tops for j in lefts]

    def decode(latent: torch.Tensor) -> torch.Tensor:
        if vae.use_framewise_decoding:
            cache, pieces = None, []
            for part in latent.split(vae.num_latent_frames_batch_size, dim=2):
                part, cache = vae.decoder(part, conv_cache=cache)
                pieces.append(part)
            out = torch.cat(pieces, dim=2)
        else:
            out = vae.decoder(latent)[0]
        drop = vae.temporal_compression_ratio - 1
        return out[:, :, drop:] if vae.drop_last_temporal_frames and out.shape[2] > drop else out

    decoded = pmap(decode, tiles, cost=[t.shape[-2] * t.shape[-1] for t in tiles])
    if decoded is None:
        return None
    return _common.stitch_tiles(vae, decoded, columns, blend, keep)[..., : height * ratio, : width * ratio]


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl_mochi:AutoencoderKLMochi",
        tiled_decode=tiled_decode,
    ),
)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in (*SPECS, *VAE_SPECS):
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
