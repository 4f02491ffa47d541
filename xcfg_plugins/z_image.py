"""Z-Image: text-to-image (``ZImagePipeline``) and its image-to-image, inpainting, ControlNet and Omni pipelines.

The pipelines batch CFG, with the batch as Python lists: one transformer call per step on the 2B latents as a
list of per-sample tensors ``x`` (each (C, 1, H, W); in Omni mode one list of images per sample), the timestep
``t`` (2B,) and the prompt embeddings as a list ``cap_feats`` of 2B tensors, each as long as its own prompt (a
negative prompt may be shorter than the prompt: the lists are never stacked). The output is a list of 2B
predictions. The batch-carrying arguments are the two lists, split as lists (``per_sample``), ``t``, the
ControlNet pipelines' ``controlnet_block_samples`` (a dict of block residuals at batch 2B) and Omni's per-sample
``siglip_feats`` and ``image_noise_mask``. ``patch_size``, ``f_patch_size`` and ``joint_attention_kwargs`` are
shared.

CFG truncation (``cfg_truncation``) turns CFG off for the last steps: those calls are at batch B and run whole
on every rank. Z-Image Turbo is step-distilled and run with ``guidance_scale=0`` (no CFG): every call then runs
whole, and xcfg says so once.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_z_image:ZImageTransformer2DModel",
        batch_inputs=[
            xcfg.BatchInput(name="x", per_sample=True),
            "t",
            xcfg.BatchInput(name="cap_feats", per_sample=True),
            "controlnet_block_samples",
            xcfg.BatchInput(name="siglip_feats", per_sample=True),
            xcfg.BatchInput(name="image_noise_mask", per_sample=True),
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=1, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32],
        ),
        "vae": dict(
            block_out_channels=(4, 8), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2, sample_size=32,
            shift_factor=0.1,
        ),
        "call": dict(height=32, width=32, num_inference_steps=3, guidance_scale=4.0),
        # (prompt tokens, negative prompt tokens, width): the two lists need not be of one length
        "text": (5, 3, 16),
        "description": "Z-Image, tiny (1 layer), 32x32",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Z-Image pipeline with random weights (the zero-initialized ones too) and random prompt embeddings of
    different lengths for the prompt and the negative prompt, called with CFG on."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=AutoencoderKL(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            transformer=ZImageTransformer2DModel(**config["transformer"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    _common.randomize_zero_weights(pipe.transformer, seed)
    length, negative_length, width = config["text"]
    embeds = _common.embeddings(seed + 1, device, dtype, prompt=(length, width), negative=(negative_length, width))
    kwargs = {**config["call"], "prompt_embeds": [embeds["prompt"]], "negative_prompt_embeds": [embeds["negative"]]}
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(
        name="z-image",
        summary="Z-Image text-to-image: the batch as lists of per-sample tensors (batched CFG)",
        build=build,
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
