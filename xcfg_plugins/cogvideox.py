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


# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds
# it on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"cogvideox": {"transformer": 5.57e9}}


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
    kwargs = _common.call_kwargs(config, seed, device, dtype)
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

# -- context parallel --------------------------------------------------------------------------------
# diffusers ships no _cp_plan for CogVideoX, and its processor calls F.scaled_dot_product_attention
# directly. The plan splits the text and the image tokens together: the image tokens (and their rotary
# embedding) and the text tokens each split along the sequence at the first block, so every rank carries
# 1/n of both, and the joint attention gathers the whole sequence through diffusers' Ulysses/ring engine
# (the order of the keys does not matter to attention). Keeping the text whole on every rank would count
# its keys n times in that engine, and costs each rank the text's projections and MLP again (226 of
# 17,776 tokens at 49x480x720: 4% more work per rank on 4, 9% on 8).


def _cp_plan() -> dict[str, Any]:
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "": {
            "image_rotary_emb": [
                ContextParallelInput(split_dim=0, expected_dims=2),
                ContextParallelInput(split_dim=0, expected_dims=2),
            ],
        },
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


class CogVideoXParallelAttnProcessor:
    """CogVideoX's joint text+image attention through diffusers' ``dispatch_attention_fn``, so that the
    parallel config diffusers puts on the processor splits it (Ulysses all-to-all or ring)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise ValueError("xcfg: the CogVideoX context-parallel processor takes no attention mask")
        text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = hidden_states.shape[0]
        # (batch, tokens, heads, head_dim): the layout of dispatch_attention_fn
        query, key, value = (
            proj(hidden_states).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, text:] = apply_rotary_emb(query[:, text:], image_rotary_emb, sequence_dim=1)
            if not attn.is_cross_attention:
                key[:, text:] = apply_rotary_emb(key[:, text:], image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        out = attn.to_out[1](attn.to_out[0](out.reshape(batch, -1, out.shape[-2] * out.shape[-1])))
        encoder_hidden_states, hidden_states = out.split([text, out.size(1) - text], dim=1)
        return hidden_states, encoder_hidden_states


_SWAP = _common.ProcessorSwap("CogVideoXAttnProcessor2_0", CogVideoXParallelAttnProcessor)
CONTEXT_PARALLEL = xcfg.ContextParallelSpec(plan=_cp_plan, processors=_SWAP, refuse=_SWAP.refuse)
SPECS = tuple(spec.model_copy(update={"context_parallel": CONTEXT_PARALLEL}) for spec in SPECS)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in (*SPECS, *VAE_SPECS):
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
