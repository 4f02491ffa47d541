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
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Stable Diffusion 3 pipeline with random weights and random prompt embeddings."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

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


EXAMPLES = (
    xcfg.Example(name="sd3", summary="Stable Diffusion 3 text-to-image (batched CFG)", build=build, sizes=tuple(CONFIGS)),
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
