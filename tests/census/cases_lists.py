"""Census builds whose batch is a Python list of per-sample tensors (Z-Image): inferred with ``per_sample``."""

from __future__ import annotations

from typing import Any

import torch
from census.case import Case


def _no_zero_weights(module: torch.nn.Module) -> None:
    """Zero-initialized layers (adaLN-zero, final projections) would hide a wrong split: give them values."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


# -- Z-Image (ZImageTransformer2DModel): x (a list of 2B latents), t (2B,), cap_feats (a list of 2B embeddings);
#    the output is a list of 2B tensors
def z_image() -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32],
    ).eval()
    _no_zero_weights(transformer)
    vae = AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2, sample_size=32, shift_factor=0.1,
    ).eval()
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )
    g = torch.Generator().manual_seed(1)
    kwargs = dict(
        prompt_embeds=[torch.randn(5, 16, generator=g)], negative_prompt_embeds=[torch.randn(5, 16, generator=g)],
        height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
    )
    return pipe, kwargs


CASES = [
    Case(pipeline="ZImagePipeline", build=z_image, note="the batch is a Python list of per-sample tensors (per_sample)"),
]
