"""LTX-2 and LTX-2.3: joint video and audio generation (``LTX2Pipeline``, ``LTX2ImageToVideoPipeline``, ...).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])`` for both
streams at once, and the model returns a ``(video, audio)`` tuple (both gathered). Batch-carrying
forward arguments: the video stream's ``hidden_states`` (2B, tokens, C), ``encoder_hidden_states``,
``encoder_attention_mask``, ``timestep`` (2B,) or (2B, tokens), ``sigma`` and ``video_coords`` (2B, 3,
tokens, 2); the audio stream's ``audio_hidden_states``, ``audio_encoder_hidden_states``,
``audio_encoder_attention_mask``, ``audio_timestep``, ``audio_sigma`` and ``audio_coords``; and the
per-sample masks ``perturbation_mask``, ``video_self_attention_mask`` and ``video_keyframes_mask``.
``num_frames``, ``height``, ``width``, ``fps``, ``audio_num_frames``, the flags and
``spatio_temporal_guidance_blocks`` are shared.

After the CFG call, the default recipe makes up to two more calls per step at batch B on the cond
inputs: spatio-temporal guidance (STG: ``spatio_temporal_guidance_blocks`` set) and modality isolation
(``isolate_modalities=True``). With one prompt their batch does not divide by two, so every rank runs
them whole: the result stays equal to one process, and 4 passes per step become 3 on two GPUs.

Context parallelism (ring or Ulysses, past 2 GPUs) is refused with the reason: diffusers' plan for LTX-2 does
not split it correctly (see the context-parallel section below).

``AutoencoderKLLTX2Video``'s tiled decode (``pipe.vae.enable_tiling()``) is split across the ranks: each rank
decodes its share of the spatial tiles (the VAE section below).
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_ltx2:LTX2VideoTransformer3DModel",
        batch_inputs=[
            "hidden_states",
            "audio_hidden_states",
            "encoder_hidden_states",
            "audio_encoder_hidden_states",
            "timestep",
            "audio_timestep",
            "sigma",
            "audio_sigma",
            "encoder_attention_mask",
            "audio_encoder_attention_mask",
            "video_coords",
            "audio_coords",
            "perturbation_mask",
            "video_self_attention_mask",
            "video_keyframes_mask",
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
            cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
            audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
            caption_channels=32, rope_double_precision=False, rope_type="split",
        ),
        "connectors": dict(
            caption_channels=32, text_proj_in_factor=3, video_connector_num_attention_heads=4,
            video_connector_attention_head_dim=8, video_connector_num_layers=1,
            video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
            rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
            layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
            decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
            upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False,
        ),
        "audio_vae": dict(
            base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
            resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
            mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
        ),
        "vocoder": dict(
            in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
            resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
            output_sampling_rate=16000,
        ),
        # the default recipe's STG (on the last of the 2 blocks) and modality-isolation passes are on
        "call": dict(
            height=32, width=32, num_frames=5, frame_rate=25.0, num_inference_steps=3, guidance_scale=3.0,
            stg_scale=1.0, modality_scale=3.0, spatio_temporal_guidance_blocks=[1], max_sequence_length=8,
        ),
        "text": (8, 32 * 3),
        "description": "LTX-2, tiny (2 layers), 5 frames 32x32 with audio, STG and modality isolation on",
    },
    # Lightricks/LTX-2: transformer/config.json as diffusers' scripts/convert_ltx2_to_diffusers.py writes it for
    # version "2.0" (19B parameters with the audio stream: 48 layers, 32 heads of 128 for video, 32 of 64 for audio,
    # Gemma-3 12B text features (3840 x 49 layers)); 121 frames 512x768 at 24 fps, 40 steps. The VAEs, vocoder and
    # connectors are built with their class defaults, which follow the same checkpoint.
    "full": {
        "transformer": dict(
            in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
            attention_head_dim=128, cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20,
            base_height=2048, base_width=2048, gated_attn=False, cross_attn_mod=False, audio_in_channels=128,
            audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=32,
            audio_attention_head_dim=64, audio_cross_attention_dim=2048, audio_scale_factor=4,
            audio_pos_embed_max_pos=20, audio_sampling_rate=16000, audio_hop_length=160, audio_gated_attn=False,
            audio_cross_attn_mod=False, num_layers=48, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
            norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840, attention_bias=True,
            attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True, causal_offset=1,
            timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, rope_type="split",
            use_prompt_embeddings=True, perturbed_attn=False,
        ),
        "connectors": {},
        "vae": {},
        "audio_vae": {},
        "vocoder": {},
        "call": dict(height=512, width=768, num_frames=121, frame_rate=24.0, num_inference_steps=40, guidance_scale=4.0),
        "text": (1024, 3840 * 49),
        "description": "LTX-2 (19B), 121 frames 512x768 with audio",
    },
}


# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds
# it on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"ltx2": {"transformer": 19e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """An LTX-2 text-to-video-and-audio pipeline with random weights and random prompt features."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        vae = AutoencoderKLLTX2Video(**config["vae"])
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        return LTX2Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            audio_vae=AutoencoderKLLTX2Audio(**config["audio_vae"]),
            text_encoder=None,
            tokenizer=None,
            connectors=LTX2TextConnectors(**config["connectors"]),
            transformer=LTX2VideoTransformer3DModel(**config["transformer"]),
            vocoder=LTX2Vocoder(**config["vocoder"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    kwargs["prompt_attention_mask"] = kwargs["prompt_embeds"].new_ones(1, length)
    kwargs["negative_prompt_attention_mask"] = kwargs["prompt_embeds"].new_ones(1, length)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(name="ltx2", summary="LTX-2 text-to-video with audio (batched CFG, STG and isolation whole)",
                 build=build, sizes=tuple(CONFIGS)),
)

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: Any, pmap: xcfg.PMap, temb: Any = None, causal: Any = None) -> Any:
    """``AutoencoderKLLTX2Video.tiled_decode(z, temb, causal).sample`` with the spatial tiles decoded across
    the ranks.

    Each tile of the latent (B, C, F, H, W) is decoded with all its frames by the decoder, with the decode
    timestep ``temb`` and the ``causal`` flag the VAE's ``decode`` received, then blended and cropped as
    diffusers does (the grid is :func:`_common.decode_spatial_tiles`). With ``use_framewise_decoding``
    diffusers cuts the frames into chunks first and calls ``tiled_decode`` for each, so each chunk is
    split. The audio VAE and the vocoder run whole on every rank (one small decode).
    """
    return _common.decode_spatial_tiles(vae, z, pmap, lambda tile: vae.decoder(tile, temb, causal=causal))


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl_ltx2:AutoencoderKLLTX2Video",
        tiled_decode=tiled_decode,
    ),
)

# -- context parallel --------------------------------------------------------------------------------
# diffusers ships a _cp_plan for LTX-2, but in diffusers 0.42.1 it does not split the model correctly, so the plan
# (diffusers' own, read from the class when first needed) comes with a refusal, before any collective:
# - the plan splits the rotary tables ``rope`` outputs along dim 1, the tokens of (batch, tokens, dim) tables; with
#   ``rope_type="split"`` (the published checkpoints) the tables are (batch, heads, tokens, dim / 2), so dim 1 is
#   the heads and the first self-attention fails with a shape mismatch ("size of tensor a (2) must match ... (4)"
#   on the tiny example, cfg 2 x Ulysses 2);
# - with ``rope_type="interleaved"`` the first attention fails as well ("output with shape [1, 1, 768, 8] doesn't
#   match the broadcast shape [1, 2, 768, 8]").


def _cp_plan() -> dict[str, Any]:
    from diffusers import LTX2VideoTransformer3DModel

    return LTX2VideoTransformer3DModel._cp_plan


def _refuse(module: Any) -> str | None:
    import diffusers

    return (
        f"diffusers {diffusers.__version__}'s context-parallel plan for LTX-2 splits its rotary tables along the "
        f"wrong dimension (with rope_type={module.config.rope_type!r} the tables are per head), and its attention "
        "fails inside diffusers with ring attention or Ulysses alike"
    )


CONTEXT_PARALLEL = xcfg.ContextParallelSpec(plan=_cp_plan, refuse=_refuse)
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
