"""Stable Diffusion 3 and 3.5 (``StableDiffusion3*Pipeline``, including ControlNet and IP-Adapter).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states``, ``encoder_hidden_states``, ``pooled_projections``,
``timestep``, the ControlNet residuals ``block_controlnet_hidden_states`` (a list, each split alike) and
the IP-Adapter's ``joint_attention_kwargs["ip_adapter_image_embeds"]``. ``skip_layers`` is shared.
Skip-layer guidance adds a call at batch B (odd for one prompt, so every rank runs it whole), and
``SD3CFGCutoffCallback`` drops the batch to B mid-run; both need nothing special. The ControlNet model
itself runs on the whole batch on every rank.
"""

from __future__ import annotations

from typing import Any

import torch

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_sd3:SD3Transformer2DModel",
        batch_inputs=[
            "hidden_states",
            "encoder_hidden_states",
            "pooled_projections",
            "timestep",
            "block_controlnet_hidden_states",
            {"name": "joint_attention_kwargs", "key": "ip_adapter_image_embeds"},
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, shift_factor=0.0609, scaling_factor=1.5035,
            use_quant_conv=False, use_post_quant_conv=False,
        ),
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=5.0),
        "text": (6, 16, 8),
        "description": "SD3, tiny (2 layers), 32x32",
    },
    # stabilityai/stable-diffusion-3-medium-diffusers: transformer/config.json (2.03B parameters), vae/config.json
    # (84M) and scheduler/scheduler_config.json (FlowMatchEulerDiscreteScheduler, shift 3.0); 1024x1024. Prompt
    # embeddings (333, 4096): 77 CLIP tokens + 256 T5 tokens; pooled (2048): CLIP-L 768 + CLIP-G 1280.
    "full": {
        "transformer": dict(
            sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
            joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
            pos_embed_max_size=192,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), latent_channels=16,
            layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=1024, force_upcast=True,
            shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False,
        ),
        "call": dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=7.0),
        "text": (333, 4096, 2048),
        "description": "SD3-medium, 1024x1024",
    },
}

# stabilityai/stable-diffusion-3.5-large: transformer/config.json (8.06B parameters: 38 layers of 38 heads, RMS
# q/k norm), the same VAE, scheduler and text-embedding shapes as SD3-medium; 1024x1024, 28 steps at guidance 3.5.
CONFIGS_SD35_LARGE: dict[str, dict[str, Any]] = {
    "tiny": {
        **CONFIGS["tiny"],
        "transformer": {**CONFIGS["tiny"]["transformer"], "qk_norm": "rms_norm"},
        "description": "SD3.5-large, tiny (2 layers, RMS q/k norm), 32x32",
    },
    "full": {
        **CONFIGS["full"],
        "transformer": dict(
            sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
            joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
            pos_embed_max_size=192, qk_norm="rms_norm",
        ),
        "call": dict(height=1024, width=1024, num_inference_steps=28, guidance_scale=3.5),
        "description": "SD3.5-large, 1024x1024",
    },
}


# The full examples' denoiser parameter counts, as the comments above state them (tests/test_full_configs.py builds
# them on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"sd3": {"transformer": 2.03e9}, "sd3.5-large": {"transformer": 8.06e9}}


def build(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, configs: dict[str, Any] | None = None
) -> xcfg.ExampleRun:
    """A Stable Diffusion 3 pipeline with random weights and random prompt embeddings (``configs``: the
    variant's configs by size, :data:`CONFIGS` for SD3-medium)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    device, dtype = _common.resolve(size, device, dtype)
    config = (CONFIGS if configs is None else configs)[size]

    def make() -> Any:
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**config["transformer"]),
            vae=AutoencoderKL(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype,
            prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width),
            pooled_prompt_embeds=(1, pooled), negative_pooled_prompt_embeds=(1, pooled),
        )
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


def build_sd35_large(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Stable Diffusion 3.5 Large pipeline with random weights and random prompt embeddings."""
    return build(size=size, device=device, dtype=dtype, seed=seed, configs=CONFIGS_SD35_LARGE)


EXAMPLES = (
    xcfg.Example(name="sd3", summary="Stable Diffusion 3 text-to-image (batched CFG)", build=build, sizes=tuple(CONFIGS)),
    xcfg.Example(
        name="sd3.5-large",
        summary="Stable Diffusion 3.5 Large text-to-image (batched CFG)",
        build=build_sd35_large,
        sizes=tuple(CONFIGS_SD35_LARGE),
    ),
)

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: torch.Tensor, pmap: xcfg.PMap) -> torch.Tensor | None:
    """``AutoencoderKL.tiled_decode(z).sample`` with the tiles decoded across the CFG ranks.

    ``AutoencoderKL`` is the VAE of SD3 and of many other pipelines (Stable Diffusion 1-2, SDXL,
    PixArt, Flux), which all get the split. The latent (B, C, H, W) is cut into overlapping square tiles of
    ``tile_latent_min_size``, ``1 - tile_overlap_factor`` of a tile apart, each decoded on its own (after
    ``post_quant_conv`` where the config has one). ``pmap`` spreads the tiles by area; every rank that
    receives them blends each tile with the one above and the one to its left and keeps its top-left part.
    """
    height, width = z.shape[-2:]
    size = vae.tile_latent_min_size
    step = int(size * (1 - vae.tile_overlap_factor))
    extent = int(vae.tile_sample_min_size * vae.tile_overlap_factor)
    blend = (extent, extent)
    keep = (vae.tile_sample_min_size - extent, vae.tile_sample_min_size - extent)
    tops, lefts = range(0, height, step), range(0, width, step)
    columns = len(lefts)
    tiles = [z[..., i : i + size, j : j + size] for i in tops for j in lefts]

    def decode(latent: torch.Tensor) -> torch.Tensor:
        if vae.config.use_post_quant_conv:
            latent = vae.post_quant_conv(latent)
        return vae.decoder(latent)

    decoded = pmap(decode, tiles, cost=[t.shape[-2] * t.shape[-1] for t in tiles])
    if decoded is None:
        return None
    return _common.stitch_tiles(vae, decoded, columns, blend, keep)


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl:AutoencoderKL",
        tiled_decode=tiled_decode,
    ),
)

# -- context parallel --------------------------------------------------------------------------------
# diffusers ships no _cp_plan for SD3, and its JointAttnProcessor2_0 calls F.scaled_dot_product_attention
# directly. The plan splits the image tokens and the text tokens (77 CLIP + 256 T5 = 333, odd) together at
# the first block, as for CogVideoX; the processor below is the joint attention through diffusers'
# ``dispatch_attention_fn`` (SD3.5's image-only second attention too).


def _cp_plan() -> dict[str, Any]:
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


class SD3ParallelAttnProcessor:
    """SD3's joint attention through diffusers' ``dispatch_attention_fn`` (its parallel config splits it)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any,
    ) -> Any:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(2, (attn.heads, -1))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        image = query.size(1)
        if encoder_hidden_states is not None:
            text_q = heads(attn.add_q_proj(encoder_hidden_states))
            text_k = heads(attn.add_k_proj(encoder_hidden_states))
            text_v = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query, key, value = (torch.cat(pair, dim=1) for pair in ((query, text_q), (key, text_k), (value, text_v)))
        out = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        ).flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](out[:, :image]))
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states = out[:, image:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


_SWAP = _common.ProcessorSwap("JointAttnProcessor2_0", SD3ParallelAttnProcessor)
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
