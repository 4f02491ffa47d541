"""Qwen-Image: text-to-image (``QwenImagePipeline``).

The pipeline evaluates true CFG in two calls per step at batch B, when given a negative prompt and
``true_cfg_scale > 1``: the transformer runs on the prompt inside ``cache_context("cond")``, then on the
negative prompt inside ``cache_context("uncond")``, and the two predictions are combined with a norm
rescale, ``comb = uncond + s * (cond - uncond)``, ``pred = comb * |cond| / |comb|`` (norms over the
channel dimension). The rescale needs both whole predictions, which the exchange gives every rank.

Between the two calls of a step ``encoder_hidden_states`` (prompt and negative prompt embeddings, which
may differ in length) and ``encoder_hidden_states_mask`` differ (the pipeline drops an all-ones mask to
``None``). ``hidden_states``, ``img_shapes``, ``guidance`` and ``attention_kwargs`` are the same objects;
``timestep`` is ``timestep / 1000``, a fresh tensor per call with equal values, so the uncond call is
predicted exactly from the second step on and the two calls of a step run on the two ranks at once.
Without a negative prompt or with ``true_cfg_scale <= 1`` a step makes one call, which every rank computes.

Qwen-Image 2.1 (``QwenImage21Pipeline``, ``QwenImage21Transformer2DModel``, a class of its own) runs the same
two calls with per-branch state: each branch has its own KV cache object for the text and condition-image
prefix, passed as the ``kv_cache`` argument (``cond_cache`` in the cond call, ``neg_cache`` in the uncond
call), and its own ``img_mask``; ``kv_cache_mode`` is ``"extract"`` in step 0 (the caches fill) and
``"cached"`` after (the prefix is read, only the image tokens are computed). Step 0 makes both calls on every
rank, so both caches fill on both ranks. From step 1 the predicted uncond call takes the arguments that
differed within the last pair from the last uncond call (``neg_cache``, the negative prompt, its masks) and
the rest from the cond call (``kv_cache_mode="cached"``, latents, timestep), so it reads the uncond branch's
cache, and the real uncond call matches it exactly (the cache is the same object; cached mode only reads it).

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_qwenimage:QwenImageTransformer2DModel",
        style="two_call",
    ),
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_qwenimage21:QwenImage21Transformer2DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

# Qwen/Qwen-Image: scheduler/scheduler_config.json (resolution-dependent exponential shift)
_SCHEDULER = dict(
    use_dynamic_shifting=True, time_shift_type="exponential", base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
    max_image_seq_len=8192, shift_terminal=0.02,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # in_channels = 4 * the VAE's z_dim: the latents are packed in 2x2 patches
        "transformer": dict(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
        ),
        "vae": dict(
            base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        ),
        "scheduler": _SCHEDULER,
        "call": dict(height=32, width=32, num_inference_steps=4, true_cfg_scale=4.0, max_sequence_length=16),
        # (prompt tokens, negative prompt tokens, width): a short negative prompt, as " " gives in practice
        "text": (8, 5, 16),
        "description": "Qwen-Image, tiny (2 layers), 32x32",
    },
    # Qwen/Qwen-Image: transformer/config.json as the class defaults give it (20.4B parameters: 60 dual-stream blocks
    # of 24 heads of 128, joint_attention_dim 3584 = Qwen2.5-VL-7B's hidden size), vae/config.json as the
    # AutoencoderKLQwenImage defaults give it, and scheduler/scheduler_config.json (above). 1024x1024
    # (default_sample_size 128 x 8), 50 steps at true_cfg_scale 4.0 (the pipeline's defaults); prompt and negative
    # prompt at the pipeline's default max_sequence_length 512 (it pads to the longest prompt: 512 is the most).
    "full": {
        "transformer": dict(
            patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
        ),
        "vae": {},
        "scheduler": _SCHEDULER,
        "call": dict(height=1024, width=1024, num_inference_steps=50, true_cfg_scale=4.0, max_sequence_length=512),
        "text": (512, 512, 3584),
        "description": "Qwen-Image (20B), 1024x1024",
    },
}

# Qwen-Image 2.1: the VAE compresses 16x (five dim_mult levels) and the transformer takes its z_dim channels
# unpatched (patch_size=1); the pipeline packs 2x2 latent groups, so 64x64 pixels make 4x4 latents, 16 tokens
CONFIGS_21: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=1, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            context_in_dim=16, axes_dims_rope=(8, 4, 4),
        ),
        "vae": dict(
            base_dim=4, decoder_base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
            latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
        ),
        "call": dict(height=64, width=64, num_inference_steps=4, true_cfg_scale=4.0),
        # (prompt tokens, negative prompt tokens, width): the prefixes, and so the two branches' caches, differ in length
        "text": (8, 5, 16),
        "description": "Qwen-Image 2.1, tiny (2 layers), 64x64, per-branch KV caches",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares). Qwen-Image 2.1 has no full size: its transformer config is known only from
# third-party copies, and its published sampling (sample_sigmas; true_cfg_scale, whose pipeline default 1.0 turns
# CFG off), VAE config and prompt length were not found.
PARAMETERS: dict[str, dict[str, float]] = {"qwenimage": {"transformer": 20.43e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Qwen-Image pipeline with random weights, random prompt embeddings and their masks, and true CFG."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return QwenImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
            vae=AutoencoderKLQwenImage(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            transformer=QwenImageTransformer2DModel(**config["transformer"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, negative_length, width = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, negative_length, width)
        )
    )
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
    negative_mask = torch.ones(1, negative_length, dtype=torch.long, device=device)
    kwargs.update(prompt_embeds_mask=mask, negative_prompt_embeds_mask=negative_mask)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


class _EmbeddingsOnlyProcessor:
    """Stands in for the Qwen3-VL processor, whose vocabulary would be a download. ``QwenImage21Pipeline``
    tokenizes its system prompt once at construction (to count the tokens it drops); the example passes
    prompt embeddings, so the processor never tokenizes a prompt."""

    class tokenizer:  # noqa: N801 - the attribute name the pipeline reads
        @staticmethod
        def encode(text: str) -> list[int]:
            return [0]

    @staticmethod
    def apply_chat_template(messages: Any, tokenize: bool = True, return_dict: bool = False) -> list[list[int]]:
        return [[0] * 12]


def build21(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Qwen-Image 2.1 pipeline with random weights and prompt embeddings, true CFG and the KV caches on."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage21 import AutoencoderKLQwenImage21
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21Transformer2DModel
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import QwenImage21Pipeline

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS_21:
        raise ValueError(f"the Qwen-Image 2.1 example has no size {size!r}")
    config = CONFIGS_21[size]

    def make() -> Any:
        return QwenImage21Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=AutoencoderKLQwenImage21(**config["vae"]),
            text_encoder=None,
            processor=_EmbeddingsOnlyProcessor(),
            transformer=QwenImage21Transformer2DModel(**config["transformer"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, negative_length, width = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, negative_length, width)
        )
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(
        name="qwenimage",
        summary="Qwen-Image text-to-image, true CFG with a norm-rescaled combination (two-call CFG)",
        build=build,
        sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="qwenimage21",
        summary="Qwen-Image 2.1 text-to-image, true CFG with one KV cache per branch (two-call CFG)",
        build=build21,
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
