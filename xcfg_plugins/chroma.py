"""Chroma: text-to-image, image-to-image and inpainting (``ChromaPipeline``, ``ChromaImg2ImgPipeline``,
``ChromaInpaintPipeline``).

The pipelines evaluate CFG in two calls per step at batch B when ``guidance_scale > 1``, without
``cache_context``: the transformer runs on the prompt, then on the negative prompt, and the prediction is
``uncond + scale * (cond - uncond)``. Between the two calls ``encoder_hidden_states``, ``txt_ids`` and
``attention_mask`` differ (each branch's T5 embeddings, text ids and padding mask extended over the image
tokens). With IP-Adapter image embeds the pipeline rewrites ``joint_attention_kwargs["ip_adapter_image_embeds"]``
in place before the uncond call (and back before the next cond call), in the same dict object, as Flux does;
the wrapper keeps a copy of every dict argument, so the change is seen and predicted. ``hidden_states``,
``img_ids`` and ``joint_attention_kwargs`` are the same objects and ``timestep`` is ``timestep / 1000``, a fresh
tensor per call with equal values, so the uncond call is predicted exactly from the second step on and the two
calls of a step run on the two ranks at once. With ``guidance_scale <= 1`` a step makes one call, which every
rank computes.

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_chroma:ChromaTransformer2DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # in_channels = 4 * the VAE's latent channels: the latents are packed in 2x2 patches
        "transformer": dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_hidden_dim=32,
            approximator_layers=1, approximator_num_channels=16,
        ),
        "vae": dict(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
            norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=5.0),
        # (tokens, width); the prompt's last 2 tokens are padding, so the masks differ between the branches
        "text": (8, 32),
        "description": "Chroma, tiny (1+1 layers), 32x32",
    },
    # lodestones/Chroma1-HD (the high-resolution finetune of lodestones/Chroma, the pipeline docstring's checkpoint):
    # transformer/config.json as ChromaTransformer2DModel's defaults give it (8.9B parameters: 19 double and 38
    # single FLUX.1 blocks of 24 heads of 128 and the 5-layer modulation approximator), the FLUX.1 VAE (Chroma is
    # FLUX.1-based: in_channels 64 = its 16 latent channels in 2x2 patches). 1024x1024 (default_sample_size 128 x 8),
    # 40 steps at guidance 3.0 (diffusers' Chroma example); T5-XXL embeddings of max_sequence_length 512.
    "full": {
        "transformer": dict(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56), approximator_hidden_dim=5120,
            approximator_layers=5, approximator_num_channels=64,
        ),
        "vae": _common.FLUX1_VAE,
        "call": dict(height=1024, width=1024, num_inference_steps=40, guidance_scale=3.0, max_sequence_length=512),
        "text": (512, 4096),
        "description": "Chroma1-HD (8.9B), 1024x1024",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"chroma": {"transformer": 8.9e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Chroma pipeline with random weights, random prompt embeddings and their padding masks, CFG on."""
    import torch
    from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS:
        raise ValueError(f"the Chroma example has no size {size!r}")
    config = CONFIGS[size]

    def make() -> Any:
        return ChromaPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=AutoencoderKL(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            transformer=ChromaTransformer2DModel(**config["transformer"]),
            image_encoder=None,
            feature_extractor=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    # the masks in the pipeline's own layout (the embeddings' dtype, 1 for a token, 0 for padding)
    mask = torch.ones(1, length, dtype=dtype, device=device)
    mask[:, length - 2 :] = 0
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=torch.ones_like(mask))
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(
        name="chroma", summary="Chroma text-to-image (two-call CFG, no cache_context)", build=build, sizes=tuple(CONFIGS)
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
