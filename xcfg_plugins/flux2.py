"""FLUX.2 (``Flux2KleinPipeline``, ``Flux2KleinInpaintPipeline``): two-call CFG for the Klein base models;
FLUX.2-dev and the step-distilled Klein variants refused, with the reason.

The Klein pipelines evaluate CFG in two calls per step at batch B when ``guidance_scale > 1`` and the
pipeline is not step-distilled (``pipe.config.is_distilled`` is False): the transformer runs on the prompt
inside ``cache_context("cond")``, then on the negative prompt (``""`` unless given) inside
``cache_context("uncond")``, and the prediction is ``uncond + scale * (cond - uncond)``. Between the two calls
``encoder_hidden_states`` and ``txt_ids`` differ (the prompt's, then the negative prompt's, which may differ
in length); ``hidden_states`` (with the reference image latents concatenated for editing), ``img_ids`` and
``joint_attention_kwargs`` are the same objects, ``guidance`` is ``None`` and ``timestep`` is
``timestep / 1000``, a fresh tensor per call with equal values. So the uncond call is predicted exactly from
the second step on and the two calls of a step run on the two ranks at once.

Refused, each with its reason:

- FLUX.2-dev (``Flux2Pipeline``) is guidance-distilled: its transformer has ``guidance_embeds=True``, the
  guidance strength goes in as the ``guidance`` input and the pipeline makes one call per step, with no
  uncond call at all (``guidance_distilled``).
- Step-distilled Klein checkpoints (``is_distilled=True`` on the pipeline, the default of
  ``Flux2KleinKVPipeline``) ignore ``guidance_scale`` and make one call per step; only the pipeline's flag
  shows it, so the refusal reads the pipeline (``refuse``).
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

NO_CFG_REASON = (
    "this FLUX.2 transformer is guidance-distilled (guidance_embeds=True, FLUX.2-dev): Flux2Pipeline runs it once per "
    "step on the prompt alone, with the guidance scale fed in as the `guidance` input, so there is no uncond call to "
    "run on another GPU. Split the sequence across GPUs instead (diffusers' context parallelism: "
    "transformer.enable_parallelism(config=ContextParallelConfig(...)); Flux2Transformer2DModel has a _cp_plan)."
)

STEP_DISTILLED_REASON = (
    "this {pipeline} is step-distilled (pipe.config.is_distilled=True, a distilled FLUX.2 Klein checkpoint): it "
    "ignores guidance_scale and runs the transformer once per step, so there is no uncond call to run on another "
    "GPU. Use the Klein base checkpoint (is_distilled=False) with guidance_scale > 1 for CFG parallelism, or split the "
    "sequence across GPUs instead (transformer.enable_parallelism(config=ContextParallelConfig(...)))."
)


def refuse(pipe: Any, module: Any) -> str | None:
    """Why this pipeline has no uncond call to split: a step-distilled Klein (``pipe.config.is_distilled``), or
    FLUX.2-dev even with ``true_cfg=True`` (``Flux2Pipeline`` has no negative prompt, so no true CFG either)."""
    if bool(getattr(getattr(module, "config", None), "guidance_embeds", False)):
        return NO_CFG_REASON
    config = getattr(pipe, "config", None)
    if config is not None and bool(getattr(config, "is_distilled", False)):
        return STEP_DISTILLED_REASON.format(pipeline=type(pipe).__name__)
    return None


SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_flux2:Flux2Transformer2DModel",
        style="two_call",
        guidance_distilled=lambda module: bool(module.config.guidance_embeds),
        no_cfg_reason=NO_CFG_REASON,
        refuse=refuse,
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # in_channels = 4 * the VAE's latent channels: the latents are packed in 2x2 patches
        "transformer": dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        ),
        "vae": dict(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
            norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False,
        ),
        "scheduler": dict(use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15),
        "call": dict(height=32, width=32, num_inference_steps=4, guidance_scale=4.0, max_sequence_length=8),
        # (prompt tokens, negative prompt tokens, width)
        "text": (8, 6, 16),
        "description": "FLUX.2 Klein, tiny (1+1 layers), 32x32",
    },
    # black-forest-labs/FLUX.2-klein-base-9B (the pipeline docstring's checkpoint): the transformer as diffusers'
    # scripts/convert_flux2_to_diffusers.py writes it for "klein-9b" (9.08B parameters: 8 double and 24 single
    # blocks of 32 heads of 128; joint_attention_dim 12288 = 3 Qwen3-8B hidden states of 4096, layers 9, 18, 27);
    # the VAE as the class defaults give it (the script builds AutoencoderKLFlux2() and loads the checkpoint into
    # it), and the FLUX.1-dev scheduler config the script reuses. 1024x1024 (default_sample_size 128 x 8), 50 steps
    # at guidance 4.0; prompts padded to max_sequence_length 512.
    "full": {
        "transformer": dict(
            patch_size=1, in_channels=128, num_layers=8, num_single_layers=24, attention_head_dim=128,
            num_attention_heads=32, joint_attention_dim=12288, timestep_guidance_channels=256, mlp_ratio=3.0,
            axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6,
        ),
        "vae": {},
        "scheduler": dict(
            use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        "call": dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=4.0, max_sequence_length=512),
        "text": (512, 512, 12288),
        "description": "FLUX.2 Klein base 9B, 1024x1024",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"flux2-klein": {"transformer": 9.08e9}}


def build(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, distilled: bool = False
) -> xcfg.ExampleRun:
    """A FLUX.2 Klein pipeline with random weights and random prompt embeddings, called with CFG on.

    ``distilled`` marks the pipeline step-distilled (``is_distilled=True``): ``parallelize`` refuses it.
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return Flux2KleinPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
            vae=AutoencoderKLFlux2(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            transformer=Flux2Transformer2DModel(**config["transformer"], guidance_embeds=False),
            is_distilled=distilled,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, negative, width = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, negative, width)
        )
    )
    description = config["description"] + (", step-distilled" if distilled else "")
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=description, output="images")


EXAMPLES = (
    xcfg.Example(
        name="flux2-klein",
        summary="FLUX.2 Klein (base, not step-distilled) text-to-image (two-call CFG)",
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
