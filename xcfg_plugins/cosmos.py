"""Cosmos (``CosmosTransformer3DModel``): Predict 2.5 (``Cosmos2_5_PredictBasePipeline``), Cosmos 2
text-to-image and Cosmos 1.0 text-to-world in two-call CFG; the Video2World pipelines refused, with the reason.
Cosmos 3 Omni (``Cosmos3OmniTransformer``) in two-call CFG too.

Cosmos Predict 2.5 evaluates CFG in two calls per step at batch B when ``guidance_scale > 1``, without
``cache_context``: the transformer runs on the prompt, then on the negative prompt, and the prediction is
``cond + scale * (cond - uncond)`` after each is blended with the ground-truth velocity on the conditioning
frames. Between the two calls only ``encoder_hidden_states`` differs; ``hidden_states`` (the latents with the
conditioning frames written in), ``condition_mask``, ``timestep`` and ``padding_mask`` are the same objects (also
with an image or video to continue: the conditioning goes into both calls alike). So the uncond call is predicted
exactly from the second step on and the two calls of a step run on the two ranks at once.

Refused: the Video2World pipelines of Cosmos 1.0 and 2 (``CosmosVideoToWorldPipeline``,
``Cosmos2VideoToWorldPipeline``) give the uncond call other inputs than the cond call: ``hidden_states`` and
``timestep`` blended with the *unconditioning* latents and indicator, and ``condition_mask`` from the uncond mask
(Cosmos 1.0 also augments each branch with its own noise). The second call of a step then never pairs with the
first, so nothing could run in parallel; ``refuse`` says so instead of running at one GPU's speed.

Cosmos 3 Omni (``Cosmos3OmniPipeline``, ``Cosmos3OmniTransformer``) runs two calls per step inside
``cache_context("cond")`` / ``("uncond")``. Its inputs are packed per-sample sequences: the text part
(``input_ids``, ``text_indexes``, ``position_ids``, ``und_len``, ``sequence_length`` and the vision/sound index
lists) is each branch's own packing, computed once before the loop; ``vision_tokens`` (a fresh one-element list
around the same latent each call) and ``vision_timesteps`` are alike in both calls. The calls are paired by their
``cache_context`` names, and the uncond call is predicted exactly from the second step on (its packing from the
last uncond call, the vision tokens and timesteps from the cond call). Its census case
(``tests/census/cases_two_call.py``) checks it on 2 ranks; it has no example here, since the pipeline takes
prompts only and its tokenizer is a download.

The published configs use ``concat_padding_mask=True``, which needs torchvision for the mask resize.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

VIDEO2WORLD = ("CosmosVideoToWorldPipeline", "Cosmos2VideoToWorldPipeline")

VIDEO2WORLD_REASON = (
    "{pipeline} gives the uncond call other inputs than the cond call (hidden_states and timestep blended with the "
    "unconditioning latents, its own condition_mask), so the two calls of a step do not pair and xcfg cannot run "
    "them on two GPUs at once. Use Cosmos2_5_PredictBasePipeline (Cosmos Predict 2.5, which conditions both calls "
    "alike) for CFG parallelism, or split the sequence across GPUs instead (diffusers' context parallelism)."
)


def refuse(pipe: Any, module: Any) -> str | None:
    """Why this pipeline's calls cannot be paired: a Video2World pipeline (by class, subclasses too)."""
    names = {cls.__name__ for cls in type(pipe).__mro__}
    for name in VIDEO2WORLD:
        if name in names:
            return VIDEO2WORLD_REASON.format(pipeline=type(pipe).__name__)
    return None


SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_cosmos:CosmosTransformer3DModel",
        style="two_call",
        refuse=refuse,
    ),
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_cosmos3:Cosmos3OmniTransformer",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # in_channels = latent channels + the condition mask; no padding-mask channel (that needs torchvision)
        "transformer": dict(
            in_channels=4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
            text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
            concat_padding_mask=False, extra_pos_embed_type="learnable",
        ),
        "vae": dict(
            base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        ),
        "call": dict(height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=3.0),
        "text": (8, 32),
        "description": "Cosmos Predict 2.5, tiny (2 layers), 5 frames 32x32",
    },
    # nvidia/Cosmos-Predict2.5-2B: the transformer as diffusers' scripts/convert_cosmos_to_diffusers.py writes it for
    # "Cosmos-2.5-Predict-Base-2B" (2.06B parameters: 28 blocks of 16 heads of 128; the prompt embeddings, all 28
    # hidden states of the Cosmos-Reason1-7B text encoder (Qwen2.5-VL-7B, 3584 wide) concatenated to 100352, are
    # projected to 1024). Its padding-mask channel (concat_padding_mask) is resized with torchvision in the forward:
    # the full example needs torchvision installed (the GPU machines have it; xcfg does not depend on it, so the
    # tiny config leaves the channel out). The Wan 2.1 VAE (the class defaults; the script takes
    # Wan2.1-T2V-1.3B's) and the script's UniPC scheduler. Text2World at the pipeline's defaults: 93 frames
    # 704x1280, 36 steps at guidance 7.0, prompts of max_sequence_length 512.
    "full": {
        "transformer": dict(
            in_channels=16 + 1, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
            mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
            rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None,
            use_crossattn_projection=True, crossattn_proj_in_channels=100352, encoder_hidden_states_channels=1024,
        ),
        "vae": {},
        "scheduler": dict(
            use_karras_sigmas=True, use_flow_sigmas=True, prediction_type="flow_prediction", sigma_max=200.0,
            sigma_min=0.01,
        ),
        "call": dict(height=704, width=1280, num_frames=93, num_inference_steps=36, guidance_scale=7.0),
        "text": (512, 100352),
        "description": "Cosmos-Predict2.5-2B, 93 frames 704x1280",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"cosmos2.5": {"transformer": 2.06e9}}


def _pass_through_safety_checker() -> Any:
    """The Cosmos pipelines refuse to run without a safety checker (the NVIDIA Open Model License), and NVIDIA's
    ``cosmos_guardrail`` is a download. This example has random weights, no NVIDIA model, so its checker passes
    everything through; with a published Cosmos checkpoint, use ``cosmos_guardrail``'s checker."""
    import torch
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    class RandomWeightsSafetyChecker(ModelMixin, ConfigMixin):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("_device", torch.zeros(1), persistent=False)

        def check_text_safety(self, prompt: str) -> bool:
            return True

        def check_video_safety(self, frames: Any) -> Any:
            return frames

    return RandomWeightsSafetyChecker()


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Cosmos Predict 2.5 text-to-world pipeline with random weights and random prompt embeddings, CFG on."""
    from diffusers import (
        AutoencoderKLWan,
        Cosmos2_5_PredictBasePipeline,
        CosmosTransformer3DModel,
        UniPCMultistepScheduler,
    )

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS:
        raise ValueError(f"the Cosmos example has no size {size!r}")
    config = CONFIGS[size]

    def make() -> Any:
        return Cosmos2_5_PredictBasePipeline(
            text_encoder=None,
            tokenizer=None,
            transformer=CosmosTransformer3DModel(**config["transformer"]),
            vae=AutoencoderKLWan(**config["vae"]),
            scheduler=UniPCMultistepScheduler(**config.get("scheduler", {})),
            safety_checker=_pass_through_safety_checker(),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="cosmos2.5", summary="Cosmos Predict 2.5 text-to-world (two-call CFG)", build=build, sizes=tuple(CONFIGS)
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
