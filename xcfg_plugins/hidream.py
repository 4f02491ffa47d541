"""HiDream-I1 (``HiDreamImagePipeline``).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (2B, C, H, W), ``timesteps`` (2B,),
``encoder_hidden_states_t5`` (2B, L, D), ``pooled_embeds`` (2B, D), and
``encoder_hidden_states_llama3``, whose batch is dimension 1: it is (layers, 2B, L, D), one slice per
Llama layer the model reads. ``img_ids``, ``img_sizes`` and ``hidden_states_masks`` are for non-square
inputs and carry the batch where given.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_hidream_image:HiDreamImageTransformer2DModel",
        batch_inputs=[
            "hidden_states",
            "timesteps",
            "encoder_hidden_states_t5",
            xcfg.BatchInput(name="encoder_hidden_states_llama3", dim=1),
            "pooled_embeds",
            "img_ids",
            "img_sizes",
            "hidden_states_masks",
        ],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, caption_channels=[8, 16], text_emb_dim=16, num_routed_experts=4,
            num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16), llama_layers=(0, 1),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4, layers_per_block=1,
            norm_num_groups=2, scaling_factor=0.3611, shift_factor=0.1159,
        ),
        "call": dict(height=16, width=16, num_inference_steps=3, guidance_scale=5.0),
        # T5 (length, width), Llama (layers, length, width), pooled CLIP width; caption_channels is [T5, Llama]
        "text": ((6, 8), (2, 6, 16), 16),
        "description": "HiDream-I1, tiny (1 dual + 1 single layer, 4 experts), 16x16",
    },
    # HiDream-ai/HiDream-I1-Full (the pipeline docstring's checkpoint): transformer/config.json as published for the
    # HiDream-I1 models (read from a Hub copy of HiDream-I1-Dev's; Full, Dev and Fast share the architecture and
    # differ in their step counts): 17.1B parameters, 16 dual-stream and 32 single-stream blocks of 20 heads of 128,
    # MoE feed-forwards of 4 routed experts (2 active), T5 and Llama caption widths 4096, the Llama layers 0-31 (then
    # 31 repeated), max_resolution 128x128 latent patches. The FLUX.1 VAE (the tiny example's scaling and shift
    # factors). 1024x1024, 50 steps at guidance 5.0 (the docstring's call). Prompt embeddings of
    # max_sequence_length 128: T5-XXL (4096), the 32 hidden states of Llama-3.1-8B-Instruct (4096) and the pooled
    # CLIP-L + CLIP-G embeddings (768 + 1280 = 2048).
    "full": {
        "transformer": dict(
            patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32, attention_head_dim=128,
            num_attention_heads=20, caption_channels=[4096, 4096], text_emb_dim=2048, num_routed_experts=4,
            num_activated_experts=2, axes_dims_rope=(64, 32, 32), max_resolution=(128, 128),
            llama_layers=list(range(32)) + [31] * 16,
        ),
        "vae": _common.FLUX1_VAE,
        "call": dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=5.0, max_sequence_length=128),
        "text": ((128, 4096), (32, 128, 4096), 2048),
        "description": "HiDream-I1-Full (17B), 1024x1024",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"hidream": {"transformer": 17.1e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A HiDream-I1 pipeline with random weights and random prompt embeddings (T5, Llama layers, pooled CLIP)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        encoders = {f"{part}{suffix}": None for part in ("text_encoder", "tokenizer") for suffix in ("", "_2", "_3", "_4")}
        return HiDreamImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=AutoencoderKL(**config["vae"]),
            transformer=HiDreamImageTransformer2DModel(**config["transformer"]),
            **encoders,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    # the pipeline rescales every request to the area of default_sample_size latents (128: 1024x1024 with the
    # published VAE); the tiny build keeps the requested size
    pipe.default_sample_size = config["call"]["height"] // pipe.vae_scale_factor
    t5, llama, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype,
            prompt_embeds_t5=(1, *t5), negative_prompt_embeds_t5=(1, *t5),
            prompt_embeds_llama3=(llama[0], 1, *llama[1:]), negative_prompt_embeds_llama3=(llama[0], 1, *llama[1:]),
            pooled_prompt_embeds=(1, pooled), negative_pooled_prompt_embeds=(1, pooled),
        )
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


EXAMPLES = (
    xcfg.Example(name="hidream", summary="HiDream-I1 text-to-image (batched CFG; Llama states batched in dim 1)",
                 build=build, sizes=tuple(CONFIGS)),
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
