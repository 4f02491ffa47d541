"""LTX-Video: text-to-video, image-to-video and conditioned generation (``LTXPipeline``,
``LTXImageToVideoPipeline``, ``LTXConditionPipeline``, ``LTXI2VLongMultiPromptPipeline``).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments:

- ``hidden_states`` (B, N, C): the latents, already packed into a token sequence;
- ``encoder_hidden_states`` (B, L, D) and ``encoder_attention_mask`` (B, L);
- ``timestep``: (B,) for text-to-video, but per token in the conditioned pipelines: (B, N) in
  image-to-video (``t * (1 - conditioning_mask)``, so the conditioning frame is at t=0), (B, N) or (B, 1)
  in ``LTXConditionPipeline`` and (B, N, 1) in the long multi-prompt pipeline. Every form has the batch
  first;
- ``video_coords`` (B, 3, N): the RoPE coordinates ``LTXConditionPipeline`` concatenates twice for CFG.
  The long multi-prompt pipeline passes them at batch 1, which the wrapper treats as broadcast.

``num_frames``, ``height``, ``width`` and ``rope_interpolation_scale`` (plain numbers) and
``attention_kwargs`` are shared. The conditioning mask itself never reaches the transformer: it only
shapes ``timestep``.

``AutoencoderKLLTXVideo``'s tiled decode (``pipe.vae.enable_tiling()``) is split across the ranks: each rank
decodes its share of the spatial tiles (the VAE section below).

Context parallelism (ring or Ulysses, past 2 GPUs) is refused with the reason: diffusers' LTX attention does
not split correctly in either mode (see the context-parallel section below).
"""

from __future__ import annotations

import functools
from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_ltx:LTXVideoTransformer3DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask", "video_coords"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=12,
            cross_attention_dim=24, num_layers=2, caption_channels=16,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
            patch_size_t=1, encoder_causal=True, decoder_causal=False,
        ),
        "call": dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0, max_sequence_length=8),
        "text": (8, 16),
        "description": "LTX-Video, tiny (2 layers), 9 frames 32x32",
    },
}

TASKS = {
    "t2v": "LTXPipeline",
    "i2v": "LTXImageToVideoPipeline",
    "condition": "LTXConditionPipeline",
}


def build(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, task: str = "t2v"
) -> xcfg.ExampleRun:
    """An LTX-Video pipeline with random weights and random prompt embeddings.

    ``task`` picks the pipeline: ``"t2v"``, ``"i2v"`` (a random first frame; per-token timesteps) or
    ``"condition"`` (a random image condition at frame 0; per-token timesteps and ``video_coords``).
    """
    import diffusers
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]
    pipeline_class = getattr(diffusers, TASKS[task])

    def make() -> Any:
        vae = AutoencoderKLLTXVideo(**config["vae"])
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        return pipeline_class(
            transformer=LTXVideoTransformer3DModel(**config["transformer"]),
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder=None,
            tokenizer=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask.clone())
    description = config["description"]
    if task != "t2v":
        # an image in [0, 1], the same on every rank
        image = torch.rand(1, 3, kwargs["height"], kwargs["width"], generator=torch.Generator().manual_seed(seed + 2))
        kwargs["image"] = image.to(device, dtype)
        description += f", {TASKS[task]}"
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=description, output="frames")


EXAMPLES = (
    xcfg.Example(name="ltx", summary="LTX-Video text-to-video (batched CFG)", build=build, sizes=tuple(CONFIGS)),
    xcfg.Example(
        name="ltx-i2v",
        summary="LTX-Video image-to-video, per-token timesteps (batched CFG)",
        build=functools.partial(build, task="i2v"),
        sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="ltx-condition",
        summary="LTX-Video conditioned generation, per-token timesteps and video_coords (batched CFG)",
        build=functools.partial(build, task="condition"),
        sizes=tuple(CONFIGS),
    ),
)

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: Any, pmap: xcfg.PMap, temb: Any = None) -> Any:
    """``AutoencoderKLLTXVideo.tiled_decode(z, temb).sample`` with the spatial tiles decoded across the ranks.

    Each tile of the latent (B, C, F, H, W) is decoded with all its frames by the decoder, with the decode
    timestep ``temb`` of the VAEs with ``timestep_conditioning`` (LTX-Video 0.9.1 and later; the pipeline
    passes ``decode_timestep``), then blended and cropped as diffusers does (the grid is
    :func:`_common.decode_spatial_tiles`). With ``use_framewise_decoding`` diffusers cuts the frames into
    chunks first and calls ``tiled_decode`` for each, so each chunk is split; the temporal blending stays
    with diffusers, on every rank.
    """
    return _common.decode_spatial_tiles(vae, z, pmap, lambda tile: vae.decoder(tile, temb))


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl_ltx:AutoencoderKLLTXVideo",
        tiled_decode=tiled_decode,
    ),
)

# -- context parallel --------------------------------------------------------------------------------
# diffusers ships a _cp_plan for LTX-Video and its processor goes through dispatch_attention_fn, but neither
# context-parallel mode computes LTX's attention correctly in diffusers 0.42.1, so the plan (diffusers' own,
# read from the class when first needed) comes with a refusal:
# - Ulysses: the processor shapes the prompt mask for all heads (``attention_mask.view(batch, attn.heads, -1,
#   kv)``) while Ulysses gives each rank ``heads / n`` of them: the first cross-attention raises inside
#   diffusers, on every rank, with or without xcfg.
# - ring: the plan splits the prompt and its mask with the video tokens; ring attention passes the text keys
#   round the ranks but applies each rank's own share of the mask to all of them, so a padded prompt (every
#   LTX pipeline pads to ``max_sequence_length`` and passes the mask) is masked wrongly: relative error 2e-2
#   on the tiny example with a log-sum-exp backend. ``ring_anything`` refuses any mask.
# The refusal comes before any collective, on every rank, with what to launch instead (CFG parallelism only).


def _cp_plan() -> dict[str, Any]:
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel._cp_plan


def _refuse(module: Any) -> str | None:
    import diffusers

    return (
        f"LTX-Video's attention does not split correctly in diffusers {diffusers.__version__}, with either mode. "
        f"Ulysses gives each rank a share of the {module.config.num_attention_heads} attention heads, but LTX's "
        "processor reshapes the prompt mask for all of them (attention_mask.view(batch, attn.heads, -1, kv)) and "
        "fails; ring attention passes the prompt's keys round the ranks but masks them with each rank's own share "
        "of the prompt mask, which changes the result of a padded prompt"
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
