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


# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds
# it on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"mochi": {"transformer": 10.0e9}}


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
    kwargs = _common.call_kwargs(config, seed, device, dtype)
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

# -- context parallel --------------------------------------------------------------------------------
# diffusers ships no _cp_plan for Mochi, and its processor calls F.scaled_dot_product_attention once per
# sample, on the prompt tokens its mask marks valid. The plan splits the image tokens (and their rotary
# embedding, at the output of ``rope``) and the text tokens together at the first block, as for CogVideoX;
# the processor below turns the prompt mask into an additive key mask on its share of the tokens (the
# time embedding pools the whole prompt with the whole mask, so the mask is not split at the root) and
# makes one call for the whole batch through diffusers' ``dispatch_attention_fn``. Image outputs equal the
# per-sample computation; the outputs of masked prompt tokens, which no later token reads, are not zeroed.


def _cp_plan() -> dict[str, Any]:
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=3, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=3, split_output=True),
        },
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


class MochiParallelAttnProcessor:
    """Mochi's joint attention through diffusers' ``dispatch_attention_fn`` with a key mask for the prompt."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(2, (attn.heads, -1))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_q = heads(attn.add_q_proj(encoder_hidden_states))
        text_k = heads(attn.add_k_proj(encoder_hidden_states))
        text_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_q = attn.norm_added_q(text_q)
        if attn.norm_added_k is not None:
            text_k = attn.norm_added_k(text_k)
        if image_rotary_emb is not None:
            query, key = _rotate(query, *image_rotary_emb), _rotate(key, *image_rotary_emb)
        image, text = query.size(1), text_q.size(1)
        mask = None
        if attention_mask is not None:
            valid = attention_mask
            if valid.shape[1] != text:  # the whole prompt's mask: take this rank's share of it
                valid = xcfg.sequence_share(valid, 1, self._parallel_config)
            keep = torch.cat([valid.new_ones(valid.shape[0], image), valid], dim=1).bool()
            mask = torch.zeros(keep.shape, dtype=query.dtype, device=query.device)
            mask = mask.masked_fill(~keep, torch.finfo(query.dtype).min)
        out = dispatch_attention_fn(
            torch.cat([query, text_q], dim=1), torch.cat([key, text_k], dim=1), torch.cat([value, text_v], dim=1),
            attn_mask=mask, backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        hidden_states, encoder_hidden_states = out.flatten(2, 3).split_with_sizes((image, text), dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


_SWAP = _common.ProcessorSwap("MochiAttnProcessor2_0", MochiParallelAttnProcessor)
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
