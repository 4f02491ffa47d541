"""AuraFlow (``AuraFlowPipeline``).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (2B, C, H, W), ``encoder_hidden_states`` (the UMT5
prompt embeddings) and ``timestep`` (2B,), the sigma expanded to the batch. ``attention_kwargs`` is
shared.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.auraflow_transformer_2d:AuraFlowTransformer2DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=8,
            num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16, out_channels=4, pos_embed_max_size=64,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4, layers_per_block=1,
            norm_num_groups=2,
        ),
        "call": dict(height=16, width=16, num_inference_steps=3, guidance_scale=3.5),
        "text": (6, 16),
        "description": "AuraFlow, tiny (1 MMDiT + 1 DiT layer), 16x16",
    },
    # fal/AuraFlow-v0.3: the transformer as diffusers' class defaults give it (6.8B parameters: 4 MMDiT and 32
    # single DiT layers of 12 heads of 256) but for pos_embed_max_size: the default 1024 (32x32 patches) fits 512x512
    # only, and a 1024x1024 latent indexes past it (a device-side assert on CUDA); 4096 fits 64x64 patches. The SDXL
    # VAE (scaling factor 0.13025) and UMT5 prompt embeddings (256, 2048); 1024x1024, 50 steps at guidance 3.5.
    "full": {
        "transformer": dict(
            sample_size=64, patch_size=2, in_channels=4, num_mmdit_layers=4, num_single_dit_layers=32,
            attention_head_dim=256, num_attention_heads=12, joint_attention_dim=2048, caption_projection_dim=3072,
            out_channels=4, pos_embed_max_size=4096,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
            layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=1024, scaling_factor=0.13025,
        ),
        "call": dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=3.5),
        "text": (256, 2048),
        "description": "AuraFlow v0.3, 1024x1024",
    },
}


# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds
# it on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"auraflow": {"transformer": 6.8e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """An AuraFlow pipeline with random weights and random prompt embeddings."""
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return AuraFlowPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=AutoencoderKL(**config["vae"]),
            transformer=AuraFlowTransformer2DModel(**config["transformer"]),
            scheduler=FlowMatchEulerDiscreteScheduler(),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    kwargs["prompt_attention_mask"] = kwargs["prompt_embeds"].new_ones(1, length)
    kwargs["negative_prompt_attention_mask"] = kwargs["prompt_embeds"].new_ones(1, length)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (xcfg.Example(name="auraflow", summary="AuraFlow text-to-image (batched CFG)", build=build, sizes=tuple(CONFIGS)),)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in SPECS:
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
