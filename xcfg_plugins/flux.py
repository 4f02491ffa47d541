"""Flux.1 (``FluxPipeline``): true CFG in two calls per step; guidance-distilled checkpoints refused by default.

Flux.1-dev is guidance-distilled (``guidance_embeds=True``): the pipeline feeds the guidance strength in
as the ``guidance`` input and normally runs the transformer once per step on the prompt alone, so there
is no uncond call to run on another rank. ``parallelize`` refuses such an instance unless called with
``true_cfg=True``. (Flux.1-schnell, timestep-distilled, has ``guidance_embeds=False``: it is accepted and,
without true CFG, every rank runs each call whole.)

With a negative prompt (``negative_prompt_embeds`` and ``negative_pooled_prompt_embeds``) and
``true_cfg_scale > 1``, the pipeline runs true CFG in two calls per step at batch B: the transformer runs
on the prompt inside ``cache_context("cond")``, then on the negative prompt inside
``cache_context("uncond")``, and combines ``uncond + s * (cond - uncond)``. That holds for a distilled
model (both calls get the same ``guidance``) and for a non-distilled one (``guidance_embeds=False``,
``guidance=None``), which ``parallelize`` always accepts.

Between the two calls of a step ``encoder_hidden_states`` and ``pooled_projections`` differ (the prompt's,
then the negative prompt's); ``txt_ids`` is a fresh zero tensor for each, equal in value. With IP-Adapter
image embeds, the pipeline also rewrites ``joint_attention_kwargs["ip_adapter_image_embeds"]`` in place
between the two calls (the image embeds, then the negative image embeds), in the same dict object; the
wrapper keeps a copy of every dict argument, so the change is seen and predicted. (The transformer pops
that entry, but from the copy diffusers' ``apply_lora_scale`` hands it, never from the pipeline's dict.)
``hidden_states``, ``img_ids`` and
``guidance`` are the same objects, and ``timestep`` is ``timestep / 1000``, a fresh tensor per call with
equal values, so the uncond call is predicted exactly from the second step on and the two calls of a step
run on the two ranks at once. Without true CFG a step makes one call, which every rank computes.
"""

from __future__ import annotations

import functools
from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

NO_CFG_REASON = (
    "this Flux.1 checkpoint is guidance-distilled (guidance_embeds=True): FluxPipeline runs the transformer once per "
    "step on the prompt alone, with the guidance scale fed in as the `guidance` input, so there is no uncond call to "
    "run on another GPU. Without true CFG, split the sequence across GPUs instead (diffusers' context parallelism: "
    "transformer.enable_parallelism(config=ContextParallelConfig(...)))."
)

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_flux:FluxTransformer2DModel",
        style="two_call",
        guidance_distilled=lambda module: bool(module.config.guidance_embeds),
        no_cfg_reason=NO_CFG_REASON,
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # in_channels = 4 * the VAE's latent channels: the latents are packed in 2x2 patches
        "transformer": dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(4, 4, 8),
        ),
        "vae": dict(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
            norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        # black-forest-labs/FLUX.1-dev: scheduler/scheduler_config.json (resolution-dependent shift)
        "scheduler": dict(use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15),
        "call": dict(
            height=32, width=32, num_inference_steps=4, true_cfg_scale=4.0, guidance_scale=3.5, max_sequence_length=8,
        ),
        # (tokens, width, pooled width); FluxPipeline wants the negative embeddings in the prompt's shape
        "text": (8, 16, 8),
        # IP-Adapter: CLIP image embeds of this width, projected to this many tokens (4: what diffusers' loader
        # infers from the projection's shape)
        "ip_adapter": (8, 4),
        "description": "Flux.1, tiny (1+1 layers), 32x32",
    },
}


def build(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, distilled: bool = False,
    ip_adapter: bool = False,
) -> xcfg.ExampleRun:
    """A Flux.1 pipeline with random weights and random prompt embeddings, called with true CFG.

    ``distilled`` builds the transformer with ``guidance_embeds=True`` (Flux.1-dev): ``parallelize`` then
    needs ``true_cfg=True``. ``ip_adapter`` adds a random IP-Adapter (image projection and cross-attention
    processors, no download) and random image embeds for both branches.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        transformer = FluxTransformer2DModel(**config["transformer"], guidance_embeds=distilled)
        if ip_adapter:
            weights = _random_ip_adapter(transformer, *config["ip_adapter"])
            transformer._load_ip_adapter_weights([weights], low_cpu_mem_usage=False)
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
            vae=AutoencoderKL(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=transformer,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), pooled_prompt_embeds=(1, pooled),
            negative_prompt_embeds=(1, length, width), negative_pooled_prompt_embeds=(1, pooled),
        )
    )
    description = config["description"] + (", guidance-distilled" if distilled else "")
    if ip_adapter:
        shape = (1, 1, config["ip_adapter"][0])  # (batch, images, CLIP width) per IP-Adapter
        embeds = _common.embeddings(seed + 2, device, dtype, image=shape, negative=shape)
        kwargs.update(ip_adapter_image_embeds=[embeds["image"]], negative_ip_adapter_image_embeds=[embeds["negative"]])
        description += ", IP-Adapter"
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=description, output="images")


def _random_ip_adapter(transformer: Any, image_width: int, tokens: int) -> dict[str, dict[str, Any]]:
    """A state dict in the layout ``FluxTransformer2DModel._load_ip_adapter_weights`` reads, random values."""
    import torch

    text, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    projection = {
        "proj.weight": torch.randn(tokens * text, image_width) * 0.1,
        "proj.bias": torch.zeros(tokens * text),
        "norm.weight": torch.ones(text),
        "norm.bias": torch.zeros(text),
    }
    layers = {}
    for index in range(len(transformer.transformer_blocks)):
        for name in ("to_k_ip", "to_v_ip"):
            layers[f"{index}.{name}.weight"] = torch.randn(inner, text) * 0.1
            layers[f"{index}.{name}.bias"] = torch.zeros(inner)
    return {"image_proj": projection, "ip_adapter": layers}


EXAMPLES = (
    xcfg.Example(
        name="flux",
        summary="Flux.1 (not guidance-distilled) text-to-image with true CFG (two-call CFG)",
        build=build,
        sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="flux-dev",
        summary="guidance-distilled Flux.1-dev with true CFG: parallelize(pipe, true_cfg=True) (two-call CFG)",
        build=functools.partial(build, distilled=True),
        sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="flux-ip-adapter",
        summary="Flux.1 with an IP-Adapter and true CFG: the image embeds change between the calls (two-call CFG)",
        build=functools.partial(build, ip_adapter=True),
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
