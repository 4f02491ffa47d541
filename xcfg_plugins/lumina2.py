"""Lumina-Image 2.0 (``Lumina2Pipeline``): two-call CFG with CFG truncation and normalization.

The pipeline evaluates CFG in two calls per step at batch B, without ``cache_context``: the transformer runs on
the prompt, then, when ``guidance_scale > 1`` and the step is not truncated, on the negative prompt; the
prediction is ``uncond + scale * (cond - uncond)``, rescaled to the cond prediction's norm when
``cfg_normalization`` is on (the exchange gives every rank both whole predictions). Between the two calls
``encoder_hidden_states`` and ``encoder_attention_mask`` differ (the prompt's and the negative prompt's Gemma-2
embeddings and masks); ``hidden_states`` and ``timestep`` (``1 - t / 1000``, the same tensor) are the same objects.
So the uncond call is predicted exactly from the second step on and the two calls of a step run on the two
ranks at once.

CFG truncation (``cfg_trunc_ratio < 1``) drops the uncond call in the late steps, ``(i + 1) / steps >
cfg_trunc_ratio``: those steps make one call, which every rank computes (the uncond call predicted at the first
such step is not asked for, and nothing waits for it).

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_lumina2:Lumina2Transformer2DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            sample_size=4, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_attention_heads=2,
            num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0,
            axes_dim_rope=(4, 2, 2), cap_feat_dim=8,
        ),
        "vae": dict(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
            norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=4.0),
        # (tokens, width); the prompt's last 2 tokens are padding, so the masks differ between the branches
        "text": (8, 8),
        "description": "Lumina-Image 2.0, tiny (2 layers), 32x32",
    },
    # Alpha-VLLM/Lumina-Image-2.0: transformer/config.json (2.61B parameters: 26 layers of 24 heads (8 key/value
    # heads) of 96, cap_feat_dim 2304 = Gemma-2-2B's hidden size; axes_lens (300, 512, 512): up to 299 caption
    # tokens and 512x512 patches) and vae/config.json (the FLUX.1 VAE). 1024x1024 (sample_size 128 x 8), 30 steps
    # at guidance 4.0 and prompts of max_sequence_length 256: the pipeline's defaults.
    "full": {
        "transformer": dict(
            sample_size=128, patch_size=2, in_channels=16, out_channels=None, hidden_size=2304, num_layers=26,
            num_refiner_layers=2, num_attention_heads=24, num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None,
            norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=(32, 32, 32), axes_lens=(300, 512, 512), cap_feat_dim=2304,
        ),
        "vae": _common.FLUX1_VAE,
        "call": dict(height=1024, width=1024, num_inference_steps=30, guidance_scale=4.0, max_sequence_length=256),
        "text": (256, 2304),
        "description": "Lumina-Image 2.0 (2.6B), 1024x1024",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"lumina2": {"transformer": 2.61e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Lumina 2 pipeline with random weights, random prompt embeddings and their masks, CFG on."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS:
        raise ValueError(f"the Lumina 2 example has no size {size!r}")
    config = CONFIGS[size]

    def make() -> Any:
        return Lumina2Pipeline(
            transformer=Lumina2Transformer2DModel(**config["transformer"]),
            vae=AutoencoderKL(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder=None,
            tokenizer=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=torch.ones_like(mask))
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(
        name="lumina2", summary="Lumina-Image 2.0 text-to-image (two-call CFG, CFG truncation)", build=build,
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
