"""Wan 2.1 and 2.2: text-to-video, image-to-video and TI2V (``WanPipeline``, ``WanImageToVideoPipeline``).

The pipelines evaluate CFG in two calls per step at batch B: the transformer runs on the prompt inside
``cache_context("cond")``, then, when ``guidance_scale > 1``, on the negative prompt inside
``cache_context("uncond")``; the prediction is ``uncond + scale * (cond - uncond)``. Between the two
calls of a step only ``encoder_hidden_states`` differs (``prompt_embeds``, then
``negative_prompt_embeds``). ``hidden_states``, ``timestep``, ``encoder_hidden_states_image`` and
``attention_kwargs`` are the same objects in both calls, so from the second step on the uncond call
is predicted exactly and the two calls of a step run on the two ranks at once. With
``guidance_scale <= 1`` a step makes one call, which every rank computes.

- Wan 2.2 A14B has two experts: ``transformer`` denoises the steps with ``t >= boundary_ratio * 1000``,
  ``transformer_2`` (the low-noise expert) the rest, with ``guidance_scale_2``. Both are wrapped and share
  what they learned of the previous step, so ``transformer_2`` predicts its first uncond call from
  ``transformer``'s last step: only the run's first step makes both calls on every rank.
- Image-to-video (Wan 2.1 I2V): ``hidden_states`` is the latents concatenated with the mask and the
  encoded first frame, and the CLIP image embeddings ``encoder_hidden_states_image`` go to both calls
  unchanged (there is no negative image).
- TI2V (Wan 2.2 5B, ``expand_timesteps=True``): ``timestep`` is per token, shape (B, seq), 0 on the
  tokens of the conditioning first frame; the same tensor goes to both calls.

- VACE (``WanVACEPipeline``, ``WanVACETransformer3DModel``; Wan 2.1 and 2.2 VACE): the same loop with
  ``control_hidden_states`` (the encoded control video and its mask) and ``control_hidden_states_scale``,
  the same objects in both calls; only ``encoder_hidden_states`` differs. With ``boundary_ratio`` it has two
  experts, as Wan 2.2, sharing their history the same way.
- Animate (``WanAnimatePipeline``, ``WanAnimateTransformer3DModel``): one loop per video segment. In the
  uncond call ``face_pixel_values`` is the face video blanked to -1 (``face * 0 - 1``, a fresh tensor per
  step with equal values) and ``encoder_hidden_states`` is the negative prompt; ``hidden_states`` (latents
  with the reference and previous-segment conditioning in the channels), ``pose_hidden_states`` and
  ``encoder_hidden_states_image`` are the same in both. Within a segment the uncond call is predicted
  exactly; the first step of each later segment misses once (new latents) and makes both calls on every rank.

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.

``AutoencoderKLWan``'s tiled decode (``pipe.vae.enable_tiling()``) is split across the CFG ranks: each rank
decodes its share of the spatial tiles (the VAE section below).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_wan:WanTransformer3DModel",
        style="two_call",
    ),
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_wan_vace:WanVACETransformer3DModel",
        style="two_call",
    ),
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_wan_animate:WanAnimateTransformer3DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        ),
        "vae": dict(
            base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        ),
        # the CLIP image encoder of image-to-video (Wan 2.1 I2V); its penultimate hidden states are the embeds
        "image_encoder": dict(
            hidden_size=8, intermediate_size=16, projection_dim=8, num_hidden_layers=2, num_attention_heads=2,
            image_size=16, patch_size=8,
        ),
        "scheduler": dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        # 4 steps: t = 999, 900 (high-noise expert), 750, 500 (low-noise expert) with Wan 2.2's boundary 0.875
        "call": dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=5.0, max_sequence_length=8),
        "text": (8, 16),
        "description": "tiny (2 layers), 9 frames 32x32",
        # VACE, as Wan 2.2 VACE (two experts): control blocks after layers 0 and 1; control channels = the encoded
        # inactive and reactive video (2 x z_dim) + the mask folded to 8x8 = 64 channels (as in Wan2.1-VACE: 2 x 16 + 64)
        "vace": dict(
            transformer=dict(vace_layers=[0, 1], vace_in_channels=2 * 4 + 64), variant="t2v-a14b",
            description="Wan 2.2 VACE, tiny (2 layers), 9 frames 32x32",
        ),
        # Animate: latents + reference/previous-segment conditioning (latents, mask) in the channels; a small
        # motion encoder on 16x16 face crops; 4-wide CLIP image embeddings
        "animate": dict(
            transformer=dict(
                in_channels=2 * 4 + 4, latent_channels=4, image_dim=4, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
                motion_encoder_size=16, motion_style_dim=8, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
                face_encoder_num_heads=2, inject_face_latents_blocks=2,
            ),
            image_encoder=dict(
                hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=4,
                intermediate_size=16, patch_size=1,
            ),
            call=dict(height=32, width=32, segment_frame_length=9, num_inference_steps=4, guidance_scale=5.0),
            face=16,
            description="Wan-Animate, tiny (2 layers), 9 frames 32x32",
        ),
    },
    # Wan-AI/Wan2.1-T2V-14B-Diffusers: transformer/config.json (14.3B parameters; the class defaults), vae/config.json
    # (the class defaults) and scheduler/scheduler_config.json (UniPC, flow prediction, shift 3.0 for 480p); 81
    # frames 480x832, UMT5 embeddings (512, 4096). Text-to-video only.
    "full": {
        "transformer": dict(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        ),
        "vae": dict(
            base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
        ),
        "scheduler": dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        "call": dict(
            # the published 14B model at 480x832; 33 frames (not 81) so 1 and 2 GPUs fit one 10-minute device call
            height=480, width=832, num_frames=33, num_inference_steps=50, guidance_scale=5.0, max_sequence_length=512,
        ),
        "text": (512, 4096),
        "description": "Wan2.1-T2V-14B, 33 frames 480x832",
        # Wan-AI/Wan2.1-VACE-14B: the T2V 14B transformer above plus 8 VACE blocks after layers 0, 5, ..., 35 on 96
        # control channels, as scripts/convert_wan_to_diffusers.py writes it for "Wan-VACE-14B" (17.34B parameters);
        # one transformer (the script gives Wan 2.1 VACE no boundary_ratio), the VAE and scheduler above (flow shift
        # 3.0, as the script sets for it). 81 frames 480x832, 50 steps at guidance 5.0: WanVACEPipeline's defaults.
        "vace": dict(
            transformer=dict(vace_layers=[0, 5, 10, 15, 20, 25, 30, 35], vace_in_channels=96), variant="t2v",
            call=dict(
                height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=5.0,
                max_sequence_length=512,
            ),
            description="Wan2.1-VACE-14B, 81 frames 480x832",
        ),
        # Wan-AI/Wan2.2-Animate-14B: the transformer as scripts/convert_wan_to_diffusers.py writes it for
        # "Wan2.2-Animate-14B" (the 14B blocks above with 36 input channels, CLIP image cross-attention and the motion
        # and face encoders: 17.27B parameters), flow shift 5.0 (the script's), the VAE above; the CLIP ViT-H/14 image
        # encoder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K, its vision config). Animation mode, one 77-frame segment at
        # 720x1280 (WanAnimatePipeline's defaults), 512x512 face crops (motion_encoder_size); 50 steps at guidance
        # 5.0, the CFG example of diffusers' Wan-Animate docs (the pipeline's default, 1.0, runs without CFG).
        "animate": dict(
            transformer=dict(
                in_channels=36, latent_channels=16, image_dim=1280, added_kv_proj_dim=5120, motion_encoder_size=512,
                motion_style_dim=512, motion_dim=20, motion_encoder_dim=512, face_encoder_hidden_dim=1024,
                face_encoder_num_heads=4, inject_face_latents_blocks=5,
            ),
            image_encoder=dict(
                hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32,
                num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
            ),
            scheduler=dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
            call=dict(
                height=720, width=1280, segment_frame_length=77, num_inference_steps=50, guidance_scale=5.0,
                max_sequence_length=512,
            ),
            face=512,
            description="Wan2.2-Animate-14B, 77 frames 720x1280",
        ),
    },
}

# The full examples' denoiser parameter counts, as the comments above state them (tests/test_full_configs.py builds
# them on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {
    "wan": {"transformer": 14.3e9},
    "wan-vace": {"transformer": 17.34e9},
    "wan-animate": {"transformer": 17.27e9},
}

VARIANTS: dict[str, dict[str, Any]] = {
    "t2v": dict(title="Wan 2.1 T2V"),
    # Wan 2.2 A14B: a high-noise and a low-noise expert, switched at t = 0.875 * 1000
    "t2v-a14b": dict(title="Wan 2.2 T2V A14B", experts=2, boundary_ratio=0.875, call=dict(guidance_scale_2=3.0)),
    # Wan 2.1 I2V: latents + mask + first frame in the channels, CLIP image embeddings in cross-attention
    "i2v": dict(title="Wan 2.1 I2V", image=True, image_encoder=True),
    # Wan 2.2 TI2V 5B in image-to-video mode: per-token timesteps, the first frame's tokens at t = 0
    "ti2v": dict(title="Wan 2.2 TI2V", image=True, expand_timesteps=True),
}


def build(
    *, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0, variant: str = "t2v"
) -> xcfg.ExampleRun:
    """A Wan pipeline with random weights, random prompt embeddings and, for image-to-video, a random image.

    ``variant`` picks the model: ``"t2v"`` (Wan 2.1, one transformer), ``"t2v-a14b"`` (Wan 2.2, two experts
    and ``boundary_ratio``), ``"i2v"`` (Wan 2.1 image-to-video with a CLIP image encoder) or ``"ti2v"``
    (Wan 2.2 5B image-to-video, ``expand_timesteps=True``). ``"full"`` exists for ``"t2v"`` only.
    """
    import numpy as np
    import PIL.Image
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS or (size != "tiny" and variant != "t2v"):
        raise ValueError(f"the Wan example {variant!r} has no size {size!r}")
    config, spec = CONFIGS[size], VARIANTS[variant]
    z_dim, temporal = config["vae"]["z_dim"], 4
    transformer_config = dict(config["transformer"])
    if spec.get("image_encoder"):
        # latents, the frame mask (one channel per frame of a temporal group) and the encoded first frame
        heads, head_dim = transformer_config["num_attention_heads"], transformer_config["attention_head_dim"]
        transformer_config.update(
            in_channels=2 * z_dim + temporal, image_dim=config["image_encoder"]["hidden_size"],
            added_kv_proj_dim=heads * head_dim,
        )

    def make() -> Any:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        try:  # transformers >= 5 names the processor that needs no torchvision
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor

        parts: dict[str, Any] = dict(
            tokenizer=None,
            text_encoder=None,
            vae=AutoencoderKLWan(**config["vae"]),
            scheduler=UniPCMultistepScheduler(**config["scheduler"]),
            transformer=WanTransformer3DModel(**transformer_config),
        )
        if spec.get("experts") == 2:
            parts["transformer_2"] = WanTransformer3DModel(**transformer_config)
            parts["boundary_ratio"] = spec["boundary_ratio"]
        if not spec.get("image"):
            return WanPipeline(**parts)
        if spec.get("image_encoder"):
            image = config["image_encoder"]["image_size"]
            parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(**config["image_encoder"]))
            parts["image_processor"] = CLIPImageProcessor(
                size={"shortest_edge": image}, crop_size={"height": image, "width": image}
            )
        return WanImageToVideoPipeline(**parts, expand_timesteps=spec.get("expand_timesteps", False))

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = {**config["call"], **spec.get("call", {})}
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width)
        )
    )
    if spec.get("image"):
        # the same image on every rank
        shape = (kwargs["height"], kwargs["width"], 3)
        pixels = np.random.default_rng(seed + 2).integers(0, 256, shape, dtype=np.uint8)
        kwargs["image"] = PIL.Image.fromarray(pixels)
    description = f"{spec['title']}, {config['description']}" if size == "tiny" else config["description"]
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=description, output="frames")


def _text(config: dict[str, Any], seed: int, device: Any, dtype: Any) -> dict[str, Any]:
    length, width = config["text"]
    shape = (1, length, width)
    return _common.embeddings(seed + 1, device, dtype, prompt_embeds=shape, negative_prompt_embeds=shape)


def build_vace(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Wan VACE pipeline with random weights and prompt embeddings: tiny as Wan 2.2 VACE (two experts), full
    as Wan2.1-VACE-14B (one transformer). No control video is given, so the pipeline conditions on its default
    (a gray video, an all-ones mask): the control latents are computed once and go to every call unchanged."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel

    device, dtype = _common.resolve(size, device, dtype)
    if "vace" not in CONFIGS.get(size, {}):
        raise ValueError(f"the Wan VACE example has no size {size!r}")
    config = CONFIGS[size]
    vace = config["vace"]
    spec = VARIANTS[vace["variant"]]
    transformer_config = {**config["transformer"], **vace["transformer"]}

    def make() -> Any:
        parts: dict[str, Any] = dict(
            tokenizer=None,
            text_encoder=None,
            vae=AutoencoderKLWan(**config["vae"]),
            scheduler=UniPCMultistepScheduler(**config["scheduler"]),
            transformer=WanVACETransformer3DModel(**transformer_config),
        )
        if spec.get("experts") == 2:
            parts.update(transformer_2=WanVACETransformer3DModel(**transformer_config), boundary_ratio=spec["boundary_ratio"])
        return WanVACEPipeline(**parts)

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = {**vace.get("call", config["call"]), **spec.get("call", {}), **_text(config, seed, device, dtype)}
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=vace["description"], output="frames")


def build_animate(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Wan-Animate pipeline (animation mode, one segment) with random weights, prompt embeddings and random
    reference image, pose video and face video."""
    import numpy as np
    import PIL.Image
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    try:  # transformers >= 5 names the processor that needs no torchvision
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    device, dtype = _common.resolve(size, device, dtype)
    if "animate" not in CONFIGS.get(size, {}):
        raise ValueError(f"the Wan-Animate example has no size {size!r}")
    config = CONFIGS[size]
    animate = config["animate"]
    transformer_config = {**config["transformer"], **animate["transformer"]}

    def make() -> Any:
        image = animate["image_encoder"]["image_size"]
        return WanAnimatePipeline(
            tokenizer=None,
            text_encoder=None,
            vae=AutoencoderKLWan(**config["vae"]),
            scheduler=UniPCMultistepScheduler(**animate.get("scheduler", config["scheduler"])),
            image_processor=CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image}),
            image_encoder=CLIPVisionModel(CLIPVisionConfig(**animate["image_encoder"])),
            transformer=WanAnimateTransformer3DModel(**transformer_config),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = {**animate["call"], **_text(config, seed, device, dtype)}
    rng = np.random.default_rng(seed + 2)  # the same images on every rank

    def image(side: int) -> Any:
        return PIL.Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))

    frames, side = kwargs["segment_frame_length"], kwargs["height"]
    kwargs.update(
        image=image(side), pose_video=[image(side) for _ in range(frames)],
        face_video=[image(animate["face"]) for _ in range(frames)],
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=animate["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="wan", summary="Wan 2.1 text-to-video (two-call CFG)", build=build, sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="wan2.2",
        summary="Wan 2.2 A14B text-to-video: two experts switched at boundary_ratio (two-call CFG)",
        build=functools.partial(build, variant="t2v-a14b"),
    ),
    xcfg.Example(
        name="wan-i2v",
        summary="Wan 2.1 image-to-video: CLIP image embeds (two-call CFG)",
        build=functools.partial(build, variant="i2v"),
    ),
    xcfg.Example(
        name="wan-ti2v",
        summary="Wan 2.2 TI2V 5B image-to-video: per-token timesteps (two-call CFG)",
        build=functools.partial(build, variant="ti2v"),
    ),
    xcfg.Example(
        name="wan-vace",
        summary="Wan VACE: control video in both calls; tiny: Wan 2.2's two experts switched at boundary_ratio, "
        "full: Wan2.1-VACE-14B (two-call CFG)",
        build=build_vace,
        sizes=tuple(CONFIGS),
    ),
    xcfg.Example(
        name="wan-animate",
        summary="Wan-Animate: pose and face videos, the face blanked in the uncond call (two-call CFG)",
        build=build_animate,
        sizes=tuple(CONFIGS),
    ),
)

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: torch.Tensor, pmap: xcfg.PMap) -> torch.Tensor | None:
    """``AutoencoderKLWan.tiled_decode(z).sample`` with the tiles decoded across the CFG ranks.

    The latent (B, C, F, H, W) is cut into overlapping spatial tiles of ``tile_sample_min_*`` pixels, a
    stride of ``tile_sample_stride_*`` pixels apart (both divided by the spatial compression in latent
    space). Each tile is decoded with all its frames, one latent frame per decoder call, carrying the
    causal convolutions' cache (the VAE's ``_feat_map``, fresh for each tile) from frame to frame; the first
    frame is the ``first_chunk``. The cache here is a local list, so a tile decoded on another rank starts
    from the same empty cache as in the 1-process loop. ``pmap`` spreads the tiles by area; every rank that
    receives them blends each tile with the one above and the one to its left, keeps its top-left
    ``stride`` part, crops to the sample size, unpatchifies (Wan 2.2's ``patch_size``) and clamps to
    [-1, 1], as diffusers does. Wan 2.1, Wan 2.2 (TI2V 5B's VAE with ``patch_size=2``), VACE, Animate
    and SkyReels V2 decode with this VAE.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    def decode(latent: torch.Tensor) -> torch.Tensor:
        cache: list[Any] = [None] * vae._cached_conv_counts["decoder"]
        frames = []
        for k in range(latent.shape[2]):
            part = vae.post_quant_conv(latent[:, :, k : k + 1])
            frames.append(vae.decoder(part, feat_cache=cache, feat_idx=[0], first_chunk=k == 0))
        return torch.cat(frames, dim=2)

    patch = vae.config.patch_size
    out = _common.decode_spatial_tiles(vae, z, pmap, decode, patch=patch or 1)
    if out is None:
        return None
    if patch is not None:
        out = unpatchify(out, patch_size=patch)
    return torch.clamp(out, min=-1.0, max=1.0)


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl_wan:AutoencoderKLWan",
        tiled_decode=tiled_decode,
    ),
)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in (*SPECS, *VAE_SPECS):
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
