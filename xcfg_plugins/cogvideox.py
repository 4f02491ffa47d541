"""CogVideoX: text-to-video, image-to-video and video-to-video (``CogVideoX*Pipeline``).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (B, F, C, H, W), ``encoder_hidden_states``,
``timestep`` (B,), ``timestep_cond`` and ``ofs`` (the image-to-video pipelines of CogVideoX 1.5 pass
it). ``image_rotary_emb`` (cos, sin) is the same for every sample and stays whole.
"""

from __future__ import annotations

from typing import Any

import torch

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.cogvideox_transformer_3d:CogVideoXTransformer3DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=8,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ),
        "call": dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=6.0, max_sequence_length=8),
        "text": (8, 16),
        "description": "CogVideoX, tiny (2 layers), 9 frames 32x32",
    },
    "small": {  # the CPU demo: enough work per step for the split to pay off on two cores
        "transformer": dict(
            num_attention_heads=8, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=32,
            text_embed_dim=64, num_layers=8, sample_width=8, sample_height=8, sample_frames=13, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=16,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ),
        "call": dict(height=64, width=64, num_frames=13, num_inference_steps=20, guidance_scale=6.0, max_sequence_length=16),
        "text": (16, 64),
        "description": "CogVideoX, small (8 layers, 7M parameters), 13 frames 64x64",
    },
    # THUDM/CogVideoX-5b: transformer/config.json (5.57B parameters), vae/config.json (216M; scaling factor 0.7
    # for 5B, 1.15258426 for 2B) and scheduler/scheduler_config.json; 49 frames 480x720, T5 embeddings (226, 4096).
    "full": {
        "transformer": dict(
            num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
            freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42, dropout=0.0, attention_bias=True,
            sample_width=90, sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
            max_text_seq_length=226, activation_fn="gelu-approximate", timestep_activation_fn="silu",
            norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
            temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=False,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(128, 256, 256, 512), latent_channels=16,
            layers_per_block=3, act_fn="silu", norm_eps=1e-6, norm_num_groups=32, temporal_compression_ratio=4,
            sample_height=480, sample_width=720, scaling_factor=0.7, force_upcast=True, use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        "scheduler": ("CogVideoXDDIMScheduler", dict(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
            prediction_type="v_prediction", rescale_betas_zero_snr=True, sample_max_value=1.0, snr_shift_scale=1.0,
            timestep_spacing="trailing",
        )),
        "call": dict(height=480, width=720, num_frames=49, num_inference_steps=50, guidance_scale=6.0, max_sequence_length=226),
        "text": (226, 4096),
        "description": "CogVideoX-5B, 49 frames 480x720",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A CogVideoX text-to-video pipeline with random weights and random prompt embeddings."""
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]
    scheduler_class, scheduler_config = config.get(
        "scheduler", ("CogVideoXDPMScheduler", dict(timestep_spacing="trailing", prediction_type="v_prediction"))
    )

    def make() -> Any:
        return CogVideoXPipeline(
            tokenizer=None,
            text_encoder=None,
            transformer=CogVideoXTransformer3DModel(**config["transformer"]),
            vae=AutoencoderKLCogVideoX(**config["vae"]),
            scheduler=getattr(diffusers, scheduler_class)(**scheduler_config),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width))
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="cogvideox",
        summary="CogVideoX text-to-video (batched CFG)",
        build=build,
        sizes=tuple(CONFIGS),
        default=True,
    ),
)

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: torch.Tensor, pmap: xcfg.PMap) -> torch.Tensor | None:
    """``AutoencoderKLCogVideoX.tiled_decode(z).sample`` with the tiles decoded across the CFG ranks.

    The latent (B, C, F, H, W) is cut into overlapping spatial tiles of ``tile_latent_min_height`` x
    ``tile_latent_min_width``, a step of ``1 - tile_overlap_factor_*`` of a tile apart. Each tile is decoded
    with all its frames, in the VAE's latent frame batches (the first batch takes the remainder), carrying
    the causal convolutions' cache from batch to batch. ``pmap`` spreads the tiles by area; every rank that
    receives them blends each tile with the one above and the one to its left and keeps its top-left part.
    """
    height, width = z.shape[-2:]
    tile = (vae.tile_latent_min_height, vae.tile_latent_min_width)
    step = (int(tile[0] * (1 - vae.tile_overlap_factor_height)), int(tile[1] * (1 - vae.tile_overlap_factor_width)))
    blend = (
        int(vae.tile_sample_min_height * vae.tile_overlap_factor_height),
        int(vae.tile_sample_min_width * vae.tile_overlap_factor_width),
    )
    keep = (vae.tile_sample_min_height - blend[0], vae.tile_sample_min_width - blend[1])
    tops, lefts = range(0, height, step[0]), range(0, width, step[1])
    columns = len(lefts)
    tiles = [z[..., i : i + tile[0], j : j + tile[1]] for i in tops for j in lefts]

    def decode(latent: torch.Tensor) -> torch.Tensor:
        frames, batch = latent.shape[2], vae.num_latent_frames_batch_size
        parts = max(frames // batch, 1)
        cache, pieces = None, []
        for part in latent.split([frames - batch * (parts - 1)] + [batch] * (parts - 1), dim=2):
            if vae.post_quant_conv is not None:
                part = vae.post_quant_conv(part)
            part, cache = vae.decoder(part, conv_cache=cache)
            pieces.append(part)
        return torch.cat(pieces, dim=2)

    decoded = pmap(decode, tiles, cost=[t.shape[-2] * t.shape[-1] for t in tiles])
    if decoded is None:
        return None
    return _common.stitch_tiles(vae, decoded, columns, blend, keep)


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl_cogvideox:AutoencoderKLCogVideoX",
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
