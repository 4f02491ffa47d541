"""Stable Diffusion 1.5/2.x, SDXL and Kolors (``UNet2DConditionModel``), with ControlNet, T2I-Adapter and IP-Adapter.

``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, their img2img/inpaint/ControlNet/T2I-Adapter
variants and ``KolorsPipeline`` batch CFG: one UNet call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments of the UNet: ``sample`` (2B, C, H, W), ``encoder_hidden_states``,
``timestep`` (a 0-dim tensor in most pipelines: shared, passed whole), ``class_labels`` (the upscaler's
noise level), ``timestep_cond`` (LCM's guidance embedding), the two attention masks, the ControlNet
residuals ``down_block_additional_residuals`` (a tuple, each split alike) and
``mid_block_additional_residual``, the T2I-Adapter's ``down_intrablock_additional_residuals`` (a
list), and the entries of ``added_cond_kwargs``: SDXL's ``text_embeds`` (pooled prompt) and
``time_ids`` (size and crop conditions), the IP-Adapter's ``image_embeds`` (a list with one tensor per
adapter) and Kandinsky 2.2's ``hint``. ``cross_attention_kwargs`` (LoRA scale, IP-Adapter masks) is
shared.

The ControlNet (``ControlNetModel``, ``MultiControlNetModel``, ``ControlNetUnionModel``,
``MultiControlNetUnionModel``) runs on the same CFG batch before the UNet: ``sample``,
``encoder_hidden_states``, ``controlnet_cond`` (the control image, doubled for CFG; a list for several
ControlNets or control modes), the union models' ``control_type`` (one-hot modes, repeated to the
batch), ``class_labels``, ``timestep_cond``, ``attention_mask`` and ``added_cond_kwargs``. Its specs are registered here so that a pipeline's
``controlnet`` can be split too where ``parallelize`` wraps it; otherwise it runs on the whole batch on
every rank and the UNet still splits its residuals. In guess mode the ControlNet sees the cond half
only (batch B) and its residuals are padded with zeros to 2B, which the UNet splits as usual.

Pipelines that batch 3B (InstructPix2Pix, PAG) or 1 + N (LEdits++) run whole on every rank: 3B does
not divide by two, and the PAG processors are detected.
"""

from __future__ import annotations

from typing import Any

import torch

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

_ADDED = [{"name": "added_cond_kwargs", "key": key} for key in ("text_embeds", "time_ids", "image_embeds", "hint")]

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.unets.unet_2d_condition:UNet2DConditionModel",
        batch_inputs=[
            "sample",
            "timestep",
            "encoder_hidden_states",
            "class_labels",
            "timestep_cond",
            "attention_mask",
            *_ADDED,
            "down_block_additional_residuals",
            "mid_block_additional_residual",
            "down_intrablock_additional_residuals",
            "encoder_attention_mask",
        ],
    ),
    *(
        xcfg.ModelSpec(
            model=path,
            batch_inputs=[
                "sample",
                "timestep",
                "encoder_hidden_states",
                "controlnet_cond",
                *(["control_type"] if union else []),  # the one-hot control modes, repeated to the batch
                "class_labels",
                "timestep_cond",
                "attention_mask",
                *_ADDED,
            ],
        )
        for path, union in (
            ("diffusers.models.controlnets.controlnet:ControlNetModel", False),
            ("diffusers.models.controlnets.multicontrolnet:MultiControlNetModel", False),
            ("diffusers.models.controlnets.controlnet_union:ControlNetUnionModel", True),
            ("diffusers.models.controlnets.multicontrolnet_union:MultiControlNetUnionModel", True),
        )
    ),
)

# -- examples ----------------------------------------------------------------------------------------

_SD15_SCHEDULER = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5: scheduler/scheduler_config.json
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, set_alpha_to_one=False,
    skip_prk_steps=True, steps_offset=1,
)
_SDXL_SCHEDULER = dict(  # stabilityai/stable-diffusion-xl-base-1.0: scheduler/scheduler_config.json
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    interpolation_type="linear", prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    use_karras_sigmas=False,
)
_TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
)
_FULL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        ),
        "vae": _TINY_VAE,
        "call": dict(height=16, width=16, num_inference_steps=3, guidance_scale=7.5),
        "text": (6, 16),
        "description": "Stable Diffusion 1.5, tiny (2 blocks), 16x16",
    },
    # stable-diffusion-v1-5/stable-diffusion-v1-5: unet/config.json (860M parameters), vae/config.json (84M),
    # CLIP ViT-L/14 prompt embeddings (77, 768); 512x512, 50 steps at guidance 7.5 (the pipeline's defaults).
    "full": {
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
            norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
            mid_block_scale_factor=1,
        ),
        "vae": {**_FULL_VAE, "sample_size": 512},
        "call": dict(height=512, width=512, num_inference_steps=50, guidance_scale=7.5),
        "text": (77, 768),
        "description": "Stable Diffusion 1.5, 512x512",
    },
}

CONFIGS_SDXL: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16, attention_head_dim=(2, 4), norm_num_groups=4, use_linear_projection=True,
            transformer_layers_per_block=(1, 1), addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=8 + 6 * 4,  # pooled prompt + 6 size/crop conditions
        ),
        "vae": _TINY_VAE,
        "call": dict(height=16, width=16, num_inference_steps=3, guidance_scale=5.0),
        "text": (6, 16, 8),
        "description": "SDXL, tiny (2 blocks), 16x16",
    },
    # stabilityai/stable-diffusion-xl-base-1.0: unet/config.json (2.57B parameters), vae/config.json (scaling factor
    # 0.13025), prompt embeddings (77, 2048) (CLIP-L 768 + OpenCLIP-G 1280), pooled (1280); 1024x1024, guidance 5.0.
    # sdxl-controlnet adds a ControlNet of the UNet's shape (ControlNetModel.from_unet: 1.25B parameters),
    # sdxl-ip-adapter one IP-Adapter (an image projection to 4 tokens and key/value projections for every
    # cross-attention: 351M parameters, 2.92B with the UNet).
    "full": {
        "unet": dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20), norm_num_groups=32, use_linear_projection=True,
            transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
        ),
        "vae": {**_FULL_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "call": dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=5.0),
        "text": (77, 2048, 1280),
        "description": "SDXL base 1.0, 1024x1024",
    },
}


# The full examples' denoiser parameter counts, as the comments above state them (tests/test_full_configs.py builds
# them on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {
    "sd15": {"unet": 860e6},
    "sdxl": {"unet": 2.57e9},
    "sdxl-controlnet": {"unet": 2.57e9, "controlnet": 1.25e9},
    "sdxl-ip-adapter": {"unet": 2.92e9},
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Stable Diffusion 1.5 pipeline with random weights and random prompt embeddings."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return StableDiffusionPipeline(
            vae=AutoencoderKL(**config["vae"]),
            text_encoder=None,
            tokenizer=None,
            unet=UNet2DConditionModel(**config["unet"]),
            scheduler=PNDMScheduler(**_SD15_SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="images")


def _randomize_zero_convs(controlnet: torch.nn.Module) -> None:
    """A fresh ControlNet zero-initializes its output convolutions, so its residuals would all be 0 and a
    wrong split of them would go unseen; give them small random weights (under the caller's seed)."""
    for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                   controlnet.controlnet_cond_embedding.conv_out):
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.2)


def _add_ip_adapter(unet: torch.nn.Module, image_embed_dim: int, tokens: int) -> None:
    """Give ``unet`` one IP-Adapter with random weights, as ``load_ip_adapter`` would from a checkpoint: an
    image projection into ``tokens`` extra context tokens and IP attention processors for cross-attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    cross = unet.config.cross_attention_dim
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(
        [ImageProjection(cross_attention_dim=cross, image_embed_dim=image_embed_dim, num_image_text_embeds=tokens)]
    )
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    processors = {}
    for name in unet.attn_processors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        if name.endswith("attn1.processor"):
            processors[name] = AttnProcessor2_0()
        else:
            processors[name] = IPAdapterAttnProcessor2_0(
                hidden_size=module.to_q.out_features, cross_attention_dim=cross, scale=1.0, num_tokens=tokens
            )
    unet.set_attn_processor(processors)
    for processor in unet.attn_processors.values():  # the new layers: random weights under the caller's seed
        for parameter in getattr(processor, "parameters", lambda: [])():
            torch.nn.init.normal_(parameter, std=0.2)


def build_sdxl(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, variant: str = "base"
) -> xcfg.ExampleRun:
    """An SDXL pipeline with random weights and random prompt embeddings; ``variant`` ``"controlnet"`` adds a
    ControlNet (the UNet's shape, random weights) and a control image, ``"ip-adapter"`` an IP-Adapter and
    precomputed image embeddings."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS_SDXL[size]
    image_dim = 8 if size == "tiny" else 1280  # IP-Adapter SDXL: OpenCLIP ViT-bigG image embeddings (1280)
    parts = dict(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, add_watermarker=False)

    def make() -> Any:
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
        scheduler = EulerDiscreteScheduler(**_SDXL_SCHEDULER)
        if variant == "controlnet":
            # the conditioning embedding downsamples the control image to the latents: by 2 (tiny VAE), by 8 (full)
            embedding = (4, 8) if size == "tiny" else (16, 32, 96, 256)
            controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding)
            _randomize_zero_convs(controlnet)
            return StableDiffusionXLControlNetPipeline(
                vae=vae, unet=unet, controlnet=controlnet, scheduler=scheduler, **parts
            )
        if variant == "ip-adapter":
            _add_ip_adapter(unet, image_dim, tokens=4)
            return StableDiffusionXLPipeline(vae=vae, unet=unet, scheduler=scheduler, image_encoder=None,
                                             feature_extractor=None, **parts)
        return StableDiffusionXLPipeline(vae=vae, unet=unet, scheduler=scheduler, **parts)

    pipe = _common.build_on(device, dtype, make, seed)
    length, width, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype,
            prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width),
            pooled_prompt_embeds=(1, pooled), negative_pooled_prompt_embeds=(1, pooled),
        )
    )
    description = config["description"]
    if variant == "controlnet":
        image = _common.embeddings(seed + 2, device, dtype, image=(1, 3, kwargs["height"], kwargs["width"]))["image"]
        kwargs["image"] = image.sigmoid()  # a control image in [0, 1]
        description += ", ControlNet"
    elif variant == "ip-adapter":
        # [negative, positive] image embeddings of one image per adapter, as prepare_ip_adapter_image_embeds takes them
        embeds = _common.embeddings(seed + 2, device, dtype, embeds=(2, 1, image_dim))["embeds"]
        kwargs["ip_adapter_image_embeds"] = [embeds]
        description += ", IP-Adapter"
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=description, output="images")


def build_sdxl_controlnet(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """An SDXL ControlNet pipeline with random weights, prompt embeddings and control image."""
    return build_sdxl(size=size, device=device, dtype=dtype, seed=seed, variant="controlnet")


def build_sdxl_ip_adapter(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """An SDXL pipeline with an IP-Adapter, random weights and random prompt and image embeddings."""
    return build_sdxl(size=size, device=device, dtype=dtype, seed=seed, variant="ip-adapter")


EXAMPLES = (
    xcfg.Example(name="sd15", summary="Stable Diffusion 1.5 text-to-image (batched CFG)", build=build, sizes=tuple(CONFIGS)),
    xcfg.Example(name="sdxl", summary="SDXL text-to-image (batched CFG)", build=build_sdxl, sizes=tuple(CONFIGS_SDXL)),
    xcfg.Example(
        name="sdxl-controlnet",
        summary="SDXL with a ControlNet (batched CFG; residuals split with the batch)",
        build=build_sdxl_controlnet,
        sizes=tuple(CONFIGS_SDXL),
    ),
    xcfg.Example(
        name="sdxl-ip-adapter",
        summary="SDXL with an IP-Adapter (batched CFG; image embeddings split with the batch)",
        build=build_sdxl_ip_adapter,
        sizes=tuple(CONFIGS_SDXL),
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
