"""CogView4: text-to-image (``CogView4Pipeline``) and its Control variant (``CogView4ControlPipeline``).

The pipelines evaluate CFG in two calls per step at batch B when ``guidance_scale > 1``: the transformer runs on
the prompt, then on the negative prompt, and the prediction is ``uncond + scale * (cond - uncond)``.
``CogView4Pipeline`` wraps the calls in ``cache_context("cond")`` / ``("uncond")``; the Control pipeline makes the
same calls without it (with the control latents concatenated to ``hidden_states`` in both). Between the two
calls only ``encoder_hidden_states`` differs (the prompt's, then the negative prompt's GLM-4 embeddings);
``hidden_states``, ``timestep``, ``original_size``, ``target_size``, ``crop_coords`` and ``attention_kwargs`` are
the same objects. So the uncond call is predicted exactly from the second step on and the two calls of a step
run on the two ranks at once. With ``guidance_scale <= 1`` a step makes one call, which every rank computes.

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_cogview4:CogView4Transformer2DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

# THUDM/CogView4-6B: scheduler/scheduler_config.json (linear time shift on the image sequence length)
_SCHEDULER = dict(
    base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear",
)

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4, out_channels=4,
            text_embed_dim=32, time_embed_dim=8, condition_dim=4,
        ),
        "vae": dict(
            block_out_channels=[8, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2, sample_size=32,
        ),
        "scheduler": _SCHEDULER,
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=5.0),
        "text": (16, 32),
        "description": "CogView4, tiny (2 layers), 32x32",
    },
    # THUDM/CogView4-6B: the transformer and VAE as diffusers' scripts/convert_cogview4_to_diffusers.py builds them
    # (6.37B parameters: 28 layers of 32 heads of 128, GLM-4-9B text width 4096; sample_size and rope_axes_dim the
    # class defaults), and the scheduler above (the script's). 1024x1024 (sample_size 128 x 8), 50 steps at
    # guidance 5.0 (the pipeline's defaults); GLM-4 prompt embeddings of the default max_sequence_length 1024.
    "full": {
        "transformer": dict(
            patch_size=2, in_channels=16, num_layers=28, attention_head_dim=128, num_attention_heads=32, out_channels=16,
            text_embed_dim=4096, time_embed_dim=512, condition_dim=256, pos_embed_max_size=128,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 512, 1024, 1024), layers_per_block=3,
            act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=1.0, shift_factor=0.0,
            force_upcast=True, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
        ),
        "scheduler": _SCHEDULER,
        "call": dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=5.0, max_sequence_length=1024),
        "text": (1024, 4096),
        "description": "CogView4-6B, 1024x1024",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"cogview4": {"transformer": 6.37e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A CogView4 pipeline with random weights and random prompt embeddings, called with CFG on."""
    from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return CogView4Pipeline(
            tokenizer=None,
            text_encoder=None,
            vae=AutoencoderKL(**config["vae"]),
            transformer=CogView4Transformer2DModel(**config["transformer"]),
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(name="cogview4", summary="CogView4 text-to-image (two-call CFG)", build=build, sizes=tuple(CONFIGS)),
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
