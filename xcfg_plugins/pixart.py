"""PixArt-α and PixArt-Σ (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``, with
``hidden_states`` passed by position. Batch-carrying forward arguments: ``hidden_states``
(B, C, H, W), ``encoder_hidden_states``, ``encoder_attention_mask`` (B, L), ``timestep`` (B,),
``attention_mask`` (B, N) when a caller gives one, and two entries of the ``added_cond_kwargs`` dict:
``"resolution"`` (B, 2) and ``"aspect_ratio"`` (B, 1). PixArt-α fills them only for the 1024-pixel
model (``sample_size == 128``, whose transformer uses the size conditioning), concatenating them twice
for CFG; otherwise, and always in PixArt-Σ, both entries are ``None`` and stay so.
``cross_attention_kwargs`` is shared.
"""

from __future__ import annotations

import functools
from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.pixart_transformer_2d:PixArtTransformer2DModel",
        batch_inputs=[
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            {"name": "added_cond_kwargs", "key": "resolution"},
            {"name": "added_cond_kwargs", "key": "aspect_ratio"},
            "attention_mask",
            "encoder_attention_mask",
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), latent_channels=4,
    layers_per_block=1, norm_num_groups=2,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # sample_size 128 is PixArt-α's 1024-pixel model: the pipeline passes the resolution and
        # aspect-ratio conditioning. The size embedding needs a width divisible by 3 (3 heads of 8).
        "alpha": dict(
            sample_size=128, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=16, in_channels=4, cross_attention_dim=24, out_channels=8, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6,
        ),
        "sigma": dict(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=16, in_channels=4, cross_attention_dim=24, out_channels=8, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6,
        ),
        "vae": _VAE,
        # without binning: the 1024-pixel model would map 32x32 to its 1024x1024 bins
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=4.5, use_resolution_binning=False,
                     max_sequence_length=8),
        "text": (8, 16),
        "description": "PixArt-{}, tiny (2 layers), 32x32",
    },
}


def build(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, variant: str = "alpha"
) -> xcfg.ExampleRun:
    """A PixArt-α (``variant="alpha"``) or PixArt-Σ (``"sigma"``) pipeline with random weights and prompt
    embeddings."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]
    pipeline_class = {"alpha": PixArtAlphaPipeline, "sigma": PixArtSigmaPipeline}[variant]

    def make() -> Any:
        return pipeline_class(
            transformer=PixArtTransformer2DModel(**config[variant]),
            vae=AutoencoderKL(**config["vae"]),
            scheduler=DPMSolverMultistepScheduler(),
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
    name = {"alpha": "α", "sigma": "Σ"}[variant]
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"].format(name), output="images")


EXAMPLES = (
    xcfg.Example(
        name="pixart-alpha",
        summary="PixArt-α text-to-image with size conditioning (batched CFG)",
        build=functools.partial(build, variant="alpha"),
        sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="pixart-sigma",
        summary="PixArt-Σ text-to-image (batched CFG)",
        build=functools.partial(build, variant="sigma"),
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
