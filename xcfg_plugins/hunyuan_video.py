"""HunyuanVideo: text-to-video (``HunyuanVideoPipeline``) with true CFG.

HunyuanVideo is guidance-distilled (``guidance_embeds=True``): the pipeline feeds the guidance strength in
as the ``guidance`` input and by default (``true_cfg_scale=1.0``) runs the transformer once per step on
the prompt alone, so there is no uncond call to run on another rank. ``parallelize`` refuses it unless
called with ``true_cfg=True``.

With negative prompt embeddings (``negative_prompt_embeds`` and ``negative_pooled_prompt_embeds``) and
``true_cfg_scale > 1``, the pipeline runs true CFG in two calls per step at batch B: the transformer runs
on the prompt inside ``cache_context("cond")``, then on the negative prompt inside
``cache_context("uncond")``, and combines ``uncond + s * (cond - uncond)``. Between the two calls
``encoder_hidden_states``, ``encoder_attention_mask`` (both may differ in length) and
``pooled_projections`` differ. ``hidden_states``, ``timestep``, ``guidance`` and ``attention_kwargs`` are
the same objects, so the uncond call is predicted exactly from the second step on and the two calls of a
step run on the two ranks at once. Without true CFG a step makes one call, which every rank computes.

``AutoencoderKLHunyuanVideo``'s tiled decode (``pipe.vae.enable_tiling()``) is split across the ranks: each
rank decodes its share of the spatial tiles (the VAE section below).
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

NO_CFG_REASON = (
    "HunyuanVideo is guidance-distilled (guidance_embeds=True): HunyuanVideoPipeline runs the transformer once per "
    "step on the prompt alone, with the guidance scale fed in as the `guidance` input, so there is no uncond call "
    "to run on another GPU."
)

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_hunyuan_video:HunyuanVideoTransformer3DModel",
        style="two_call",
        guidance_distilled=lambda module: bool(module.config.guidance_embeds),
        no_cfg_reason=NO_CFG_REASON,
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
        ),
        "scheduler": dict(shift=7.0),
        "call": dict(height=32, width=32, num_frames=5, num_inference_steps=4, true_cfg_scale=4.0, guidance_scale=6.0,
                     max_sequence_length=8),
        # (prompt tokens, negative prompt tokens, width, pooled width)
        "text": (8, 6, 16, 8),
        "description": "HunyuanVideo, tiny (1+1 layers), 5 frames 32x32",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A HunyuanVideo pipeline with random weights, random prompt embeddings and masks, and true CFG.

    The transformer is guidance-distilled like the published model: parallelize it with
    ``xcfg.parallelize(pipe, true_cfg=True)``.
    """
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return HunyuanVideoPipeline(
            text_encoder=None,
            tokenizer=None,
            transformer=HunyuanVideoTransformer3DModel(**config["transformer"]),
            vae=AutoencoderKLHunyuanVideo(**config["vae"]),
            scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
            text_encoder_2=None,
            tokenizer_2=None,
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, negative_length, width, pooled = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(
            seed + 1, device, dtype, prompt_embeds=(1, length, width), pooled_prompt_embeds=(1, pooled),
            negative_prompt_embeds=(1, negative_length, width), negative_pooled_prompt_embeds=(1, pooled),
        )
    )
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    mask[:, length - 2 :] = 0  # padded prompt tokens, so the mask matters
    negative_mask = torch.ones(1, negative_length, dtype=torch.long, device=device)
    kwargs.update(prompt_attention_mask=mask, negative_prompt_attention_mask=negative_mask)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="hunyuan-video",
        summary="HunyuanVideo (guidance-distilled) with true CFG: parallelize(pipe, true_cfg=True) (two-call CFG)",
        build=build,
        sizes=tuple(CONFIGS),
    ),
)

# -- vae ---------------------------------------------------------------------------------------------


def tiled_decode(vae: Any, z: Any, pmap: xcfg.PMap) -> Any:
    """``AutoencoderKLHunyuanVideo.tiled_decode(z).sample`` with the spatial tiles decoded across the ranks.

    Each tile of the latent (B, C, F, H, W) is decoded with all its frames by ``post_quant_conv`` and the
    decoder, then blended and cropped as diffusers does (the grid is :func:`_common.decode_spatial_tiles`).
    A long video's decode (``use_framewise_decoding``, on by default) cuts the frames into overlapping
    chunks first and calls ``tiled_decode`` for each chunk, so each chunk is split; the temporal blending
    stays with diffusers, on every rank. HunyuanVideo, its image-to-video and FramePack pipelines decode
    with this VAE.
    """

    def decode(tile: Any) -> Any:
        return vae.decoder(vae.post_quant_conv(tile))

    return _common.decode_spatial_tiles(vae, z, pmap, decode)


VAE_SPECS = (
    xcfg.VAESpec(
        model="diffusers.models.autoencoders.autoencoder_kl_hunyuan_video:AutoencoderKLHunyuanVideo",
        tiled_decode=tiled_decode,
    ),
)

# -- context parallel --------------------------------------------------------------------------------
# diffusers ships no _cp_plan for HunyuanVideo; its block processor already goes through
# dispatch_attention_fn. The plan splits the image tokens (and their rotary embedding, at the output of
# ``rope``) and the text tokens together at the first dual-stream block, as for CogVideoX (the text token
# refiner runs before, on the whole prompt, with diffusers' plain AttnProcessor2_0, which context
# parallelism leaves alone). The forward builds one key mask over ``[all image, all text]`` tokens; the
# processor below cuts each rank's ``[image_i, text_i]`` out of it, from the lengths a forward pre-hook reads
# off the call's inputs. Image-to-video with token replacement (``image_condition_type="token_replace"``)
# treats the first frame's tokens apart and is refused.


def _cp_plan() -> dict[str, Any]:
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _processor_class() -> type:
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    class HunyuanVideoParallelAttnProcessor(HunyuanVideoAttnProcessor2_0):
        """diffusers' processor, with the whole-sequence key mask cut to this rank's share of the tokens."""

        def __init__(self, lengths: dict[str, int]) -> None:
            super().__init__()
            self.lengths = lengths

        def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                     attention_mask: Any = None, image_rotary_emb: Any = None) -> Any:
            if attention_mask is not None and self._parallel_config is not None:
                attention_mask = self._share(attention_mask)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

        def _share(self, mask: Any) -> Any:
            import torch

            image, text = self.lengths["image"], self.lengths["text"]
            if mask.shape[-1] != image + text:
                return mask
            config = self._parallel_config
            return torch.cat([xcfg.sequence_share(mask[..., :image], -1, config),
                              xcfg.sequence_share(mask[..., image:], -1, config)], dim=-1)

    return HunyuanVideoParallelAttnProcessor


def _install_processors(module: Any) -> Any:
    cls = _processor_class()
    lengths: dict[str, int] = {}
    config = module.config

    def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        _, _, frames, height, width = hidden.shape
        lengths["image"] = (frames // config.patch_size_t) * (height // config.patch_size) * (width // config.patch_size)
        lengths["text"] = int(text.shape[1])

    swapped = [(m, m.processor) for m in module.modules()
               if type(getattr(m, "processor", None)).__name__ == "HunyuanVideoAttnProcessor2_0"]
    for m, _ in swapped:
        m.processor = cls(lengths)
    hook = module.register_forward_pre_hook(record, with_kwargs=True)

    def undo() -> None:
        hook.remove()
        for m, processor in swapped:
            m.processor = processor

    return undo


def _refuse(module: Any) -> str | None:
    if module.config.get("image_condition_type") == "token_replace":
        return "image-to-video with token replacement treats the first frame's tokens apart from the others"
    for name, m in module.named_modules():
        processor = type(getattr(m, "processor", None)).__name__
        if name.startswith(("transformer_blocks", "single_transformer_blocks")) and hasattr(m, "processor") \
                and processor != "HunyuanVideoAttnProcessor2_0":
            return f"{name} uses the attention processor {processor}, which the plan was not written for"
    return None


CONTEXT_PARALLEL = xcfg.ContextParallelSpec(plan=_cp_plan, processors=_install_processors, refuse=_refuse)
SPECS = tuple(spec.model_copy(update={"context_parallel": CONTEXT_PARALLEL}) for spec in SPECS)

# -- hooks -------------------------------------------------------------------------------------------


@xcfg.hookimpl
def register_models(register: Any) -> None:
    for spec in (*SPECS, *VAE_SPECS):
        register(spec)


@xcfg.hookimpl
def register_examples(register: Any) -> None:
    for example in EXAMPLES:
        register(example)
