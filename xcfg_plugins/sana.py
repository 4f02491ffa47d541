"""Sana (``SanaPipeline``, ``SanaControlNetPipeline``; Sana-Sprint shares the model class).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``, with
``hidden_states`` passed by position. Batch-carrying forward arguments: ``hidden_states``
(B, C, H, W), ``encoder_hidden_states``, ``encoder_attention_mask`` (B, L), ``timestep`` (B,),
``attention_mask`` when a caller gives one, and the ControlNet residuals ``controlnet_block_samples``
(a tuple, each split alike; the ControlNet model itself runs on the whole batch on every rank).
``guidance`` (B,) is listed too: the Sana-Sprint pipelines pass it per sample. Sprint is
guidance-distilled and calls the transformer once per step at batch B with no uncond half, so it gains
nothing here: one prompt (an odd batch) runs whole on every rank, and an even batch of prompts is split
like any batch, which needs ``guidance`` split with it. ``attention_kwargs`` is shared.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.sana_transformer:SanaTransformer2DModel",
        batch_inputs=[
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            "guidance",
            "encoder_attention_mask",
            "attention_mask",
            "controlnet_block_samples",
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=4,
            num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
            sample_size=32,
        ),
        "vae": dict(
            in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
            upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
            scaling_factor=0.41407,
        ),
        # without binning the 32x32 request stays 32x32; no complex human instruction (it needs the tokenizer)
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=4.5, use_resolution_binning=False,
                     complex_human_instruction=None, max_sequence_length=8),
        "text": (8, 16),
        "description": "Sana, tiny (2 layers), 32x32",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Sana pipeline with random weights and random prompt embeddings."""
    import torch
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return SanaPipeline(
            transformer=SanaTransformer2DModel(**config["transformer"]),
            vae=AutoencoderDC(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=None,
            tokenizer=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
    # negative_prompt defaults to "", which the pipeline refuses next to negative_prompt_embeds
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask.clone(), negative_prompt=None)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(name="sana", summary="Sana text-to-image (batched CFG)", build=build, sizes=tuple(CONFIGS)),
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
