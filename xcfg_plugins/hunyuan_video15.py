"""HunyuanVideo 1.5: text-to-video and image-to-video (``HunyuanVideo15Pipeline``,
``HunyuanVideo15ImageToVideoPipeline``), CFG through a diffusers guider object.

The pipelines route CFG through ``pipe.guider`` (a ``ClassifierFreeGuidance`` by default). Each step,
``guider.prepare_inputs`` splits the text inputs into one batch per prediction, the cond batch first, and the
pipeline calls the transformer once per batch at batch B, inside ``cache_context(identifier)`` (``"pred_cond"``,
then ``"pred_uncond"``); ``guider(state)`` combines the two. So it is two-call CFG, cond first. Between the two
calls ``encoder_hidden_states``, ``encoder_attention_mask`` (Qwen2.5-VL embeddings) and
``encoder_hidden_states_2``, ``encoder_attention_mask_2`` (ByT5 glyph embeddings) differ; ``hidden_states``
(latents with the conditioning latents and mask in the channels), ``timestep``, ``image_embeds`` (the SigLIP
image embeddings, zeros for text-to-video) and ``attention_kwargs`` are the same objects. The uncond call is
predicted exactly from the second step on and the two calls of a step run on the two ranks at once.

A step where the guider makes one prediction (``guidance_scale <= 1``, or outside the guider's
``start``/``stop`` range) makes one call, which every rank computes. Guiders with more than two predictions per
step (PAG, skip-layer guidance) install layer hooks in ``prepare_models`` for their third call: that call is
not a cond/uncond pair and runs whole.

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_hunyuan_video15:HunyuanVideo15Transformer3DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # in_channels = latents + conditioning latents + mask (4 + 4 + 1)
        "transformer": dict(
            in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
            image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16), layers_per_block=1,
            spatial_compression_ratio=4, temporal_compression_ratio=2, downsample_match_channel=False,
            upsample_match_channel=False,
        ),
        "scheduler": dict(shift=7.0),
        "guidance_scale": 6.0,
        "call": dict(height=16, width=16, num_frames=9, num_inference_steps=4),
        # (prompt tokens, negative prompt tokens, width) for the Qwen2.5-VL and the ByT5 embeddings
        "text": ((8, 6, 16), (4, 3, 32)),
        "description": "HunyuanVideo 1.5, tiny (2 layers), 9 frames 16x16",
    },
    # hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v (the pipeline docstring's checkpoint): the transformer as
    # diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py writes it for "480p_t2v" (the class defaults with
    # target_size 640 and task_type "i2v", as the script has it; the model does not read task_type): 8.33B
    # parameters, 54 double-stream blocks of 16 heads of 128. The VAE as the class defaults give it (the script
    # builds AutoencoderKLHunyuanVideo15()), the scheduler's shift 5.0 and the guider's scale 6.0 from the script's
    # 480p_t2v entries. 121 frames (the pipeline's default) at 480x848 (the pipeline's default size for target_size
    # 640, 16:9), 50 steps. Prompt embeddings: Qwen2.5-VL-7B (1000 tokens, the pipeline's tokenizer_max_length, of
    # 3584) and the Glyph ByT5 encoder (256 tokens of 1472).
    "full": {
        "transformer": dict(
            in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
            num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=3584,
            text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0, rope_axes_dim=(16, 56, 56), target_size=640,
            task_type="i2v",
        ),
        "vae": {},
        "scheduler": dict(shift=5.0),
        "guidance_scale": 6.0,
        "call": dict(height=480, width=848, num_frames=121, num_inference_steps=50),
        "text": ((1000, 1000, 3584), (256, 256, 1472)),
        "description": "HunyuanVideo 1.5 480p T2V (8.3B), 121 frames 480x848",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"hunyuan-video15": {"transformer": 8.33e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A HunyuanVideo 1.5 text-to-video pipeline with random weights, random prompt embeddings (both text
    encoders', with masks) and a ``ClassifierFreeGuidance`` guider."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS:
        raise ValueError(f"the HunyuanVideo 1.5 example has no size {size!r}")
    config = CONFIGS[size]

    def make() -> Any:
        return HunyuanVideo15Pipeline(
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=HunyuanVideo15Transformer3DModel(**config["transformer"]),
            vae=AutoencoderKLHunyuanVideo15(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
            guider=ClassifierFreeGuidance(guidance_scale=config["guidance_scale"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = dict(config["call"])
    for suffix, (length, negative, width) in zip(("", "_2"), config["text"]):
        embeds = _common.embeddings(
            seed + 1 + len(suffix), device, dtype, prompt=(1, length, width), negative=(1, negative, width)
        )
        mask = torch.ones(1, length, dtype=torch.long, device=device)
        mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
        kwargs.update({
            f"prompt_embeds{suffix}": embeds["prompt"], f"prompt_embeds_mask{suffix}": mask,
            f"negative_prompt_embeds{suffix}": embeds["negative"],
            f"negative_prompt_embeds_mask{suffix}": torch.ones(1, negative, dtype=torch.long, device=device),
        })
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="hunyuan-video15",
        summary="HunyuanVideo 1.5 text-to-video, CFG through a ClassifierFreeGuidance guider (two-call CFG)",
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
