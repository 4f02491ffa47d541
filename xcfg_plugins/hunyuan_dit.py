"""HunyuanDiT (``HunyuanDiTPipeline``, ``HunyuanDiTControlNetPipeline``).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``, with
``hidden_states`` and ``timestep`` passed by position. Batch-carrying forward arguments:
``hidden_states`` (B, C, H, W), ``timestep`` (B,), the two text streams ``encoder_hidden_states`` /
``text_embedding_mask`` (CLIP-like, B x 77) and ``encoder_hidden_states_t5`` / ``text_embedding_mask_t5``
(T5, B x 256), ``image_meta_size`` (B, 6), ``style`` (B,) and the ControlNet residuals
``controlnet_block_samples`` (a list, each split alike; the ControlNet model itself runs on the whole
batch on every rank). The pipeline builds ``image_meta_size`` and ``style`` by repeating one row, so
every half holds the same values; they are split only to match the batch.

``image_rotary_emb`` is shared and must reach every rank whole: a ``(cos, sin)`` pair of
(tokens, head_dim) tensors with no batch dimension. Listing it would split it, or raise when the token
count is not the batch.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.hunyuan_transformer_2d:HunyuanDiT2DModel",
        batch_inputs=[
            "hidden_states",
            "timestep",
            "encoder_hidden_states",
            "text_embedding_mask",
            "encoder_hidden_states_t5",
            "text_embedding_mask_t5",
            "image_meta_size",
            "style",
            "controlnet_block_samples",
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
            hidden_size=24, cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=8,
            text_len=6, text_len_t5=8, activation_fn="gelu-approximate",
        ),
        # four blocks: the pipeline assumes a VAE that downsamples by 8 when it sizes the RoPE grid
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2,
        ),
        # without binning: the pipeline would map 64x64 to one of its 1024-pixel shapes
        "call": dict(height=64, width=64, num_inference_steps=4, guidance_scale=5.0, use_resolution_binning=False),
        "text": ((6, 16), (8, 16)),
        "description": "HunyuanDiT, tiny (2 layers), 64x64",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A HunyuanDiT pipeline with random weights and random prompt embeddings for both text encoders."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return HunyuanDiTPipeline(
            transformer=HunyuanDiT2DModel(**config["transformer"]),
            vae=AutoencoderKL(**config["vae"]),
            scheduler=DDPMScheduler(),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    (length, width), (length_t5, width_t5) = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype,
            prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width),
            prompt_embeds_2=(1, length_t5, width_t5), negative_prompt_embeds_2=(1, length_t5, width_t5),
        )
    )
    for suffix, n in (("", length), ("_2", length_t5)):
        mask = torch.ones(1, n, dtype=torch.long, device=device)
        mask[:, n - 2 :] = 0  # padded prompt tokens, so the masks matter
        kwargs[f"prompt_attention_mask{suffix}"] = mask
        kwargs[f"negative_prompt_attention_mask{suffix}"] = mask.clone()
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(name="hunyuan-dit", summary="HunyuanDiT text-to-image (batched CFG)", build=build, sizes=tuple(CONFIGS)),
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
