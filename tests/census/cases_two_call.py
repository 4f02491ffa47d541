"""Census builds of the two-call and guider pipelines of diffusers 0.42.1 that no plugin example covers.

Each build is a tiny fp32 CPU pipeline with seeded random weights, called with prompt embeddings (no tokenizer,
no download), a few steps and CFG on. Sizes are those diffusers' own tests use for the same classes (facts, not
their code). The plugin examples of the two-call families go in by name.

GLM-Image is the hazard case: see :func:`glm_image` (expected: the inferred two-call style verifies its first
predicted uncond call, finds it differs, and runs whole, equal to one process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch

from census.case import Case


def _built(make: Callable[[], Any], seed: int = 0) -> Any:
    """``make()`` under a fixed seed (the same weights on every rank), in eval mode; the caller's RNG kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = make()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _randn(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _image(seed: int, height: int, width: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _mask(length: int, padded: int = 0, dtype: torch.dtype = torch.long) -> torch.Tensor:
    mask = torch.ones(1, length, dtype=dtype)
    if padded:
        mask[:, length - padded :] = 0
    return mask


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )


def _qwen_vae() -> Any:
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )


def _flux_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
        norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )


# -- two-call pipelines --------------------------------------------------------------------------------


def chronoedit() -> tuple[Any, dict[str, Any]]:
    """ChronoEdit (Wan-based image editing): image latents and CLIP image embeds identical in both calls."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModel

    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    pipe = _built(lambda: ChronoEditPipeline(
        tokenizer=None, text_encoder=None,
        image_encoder=CLIPVisionModel(CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=16,
            intermediate_size=16, patch_size=8,
        )),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        transformer=ChronoEditTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * 4 + 4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, image_dim=4,
        ),
        vae=_wan_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    ))
    cond, uncond = _randn(1, (1, 8, 16), (1, 8, 16))
    return pipe, dict(
        image=_image(2, 32, 32), prompt_embeds=cond, negative_prompt_embeds=uncond, height=32, width=32, num_frames=5,
        num_inference_steps=3, guidance_scale=6.0, max_sequence_length=8,
    )


def helios() -> tuple[Any, dict[str, Any]]:
    """Helios (Wan-based chunked video): the history latents are identical in both calls of a step."""
    from diffusers import HeliosPipeline, HeliosScheduler, HeliosTransformer3DModel

    pipe = _built(lambda: HeliosPipeline(
        tokenizer=None, text_encoder=None, vae=_wan_vae(),
        scheduler=HeliosScheduler(stage_range=[0, 1], stages=1, use_dynamic_shifting=True),
        transformer=HeliosTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_dim=(4, 4, 4), has_multi_term_memory_patch=True,
            guidance_cross_attn=True, zero_history_timestep=True, is_amplify_history=False,
        ),
    ))
    cond, uncond = _randn(1, (1, 8, 16), (1, 8, 16))
    return pipe, dict(
        prompt_embeds=cond, negative_prompt_embeds=uncond, height=32, width=32, num_frames=9, num_inference_steps=3,
        guidance_scale=5.0, max_sequence_length=8,
    )


def krea2() -> tuple[Any, dict[str, Any]]:
    """Krea 2: cond first, ``cond + s * (cond - uncond)``; masks differ per branch."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline, Krea2Transformer2DModel

    pipe = _built(lambda: Krea2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400,
        ),
        vae=_qwen_vae(), text_encoder=None, tokenizer=None,
        transformer=Krea2Transformer2DModel(
            in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=3,
            text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
            num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2), rope_theta=1000.0,
        ),
        text_encoder_select_layers=(0, 1, 2),
    ))
    cond, uncond = _randn(1, (1, 8, 3, 16), (1, 8, 3, 16))
    return pipe, dict(
        prompt_embeds=cond, prompt_embeds_mask=_mask(8, 2, torch.bool), negative_prompt_embeds=uncond,
        negative_prompt_embeds_mask=_mask(8, 0, torch.bool), height=32, width=32, num_inference_steps=3,
        guidance_scale=3.0,
    )


def ovis_image() -> tuple[Any, dict[str, Any]]:
    """Ovis-Image (Flux-like): text ids differ per branch."""
    from diffusers import FlowMatchEulerDiscreteScheduler, OvisImagePipeline, OvisImageTransformer2DModel

    pipe = _built(lambda: OvisImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux_vae(), text_encoder=None, tokenizer=None,
        transformer=OvisImageTransformer2DModel(
            patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8),
        ),
    ))
    cond, uncond = _randn(1, (1, 8, 32), (1, 8, 32))
    return pipe, dict(
        prompt_embeds=cond, negative_prompt=None, negative_prompt_embeds=uncond, height=32, width=32,
        num_inference_steps=3, guidance_scale=2.0,
    )


def nucleusmoe_image() -> tuple[Any, dict[str, Any]]:
    """NucleusMoE-Image (Qwen-Image-like, MoE off): norm-rescaled CFG on the gathered predictions."""
    from diffusers import FlowMatchEulerDiscreteScheduler, NucleusMoEImagePipeline, NucleusMoEImageTransformer2DModel

    pipe = _built(lambda: NucleusMoEImagePipeline(
        transformer=NucleusMoEImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
            joint_attention_dim=16, axes_dims_rope=(8, 4, 4), moe_enabled=False, capacity_factors=[8.0, 8.0],
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_qwen_vae(), text_encoder=None, processor=None,
    ))
    cond, uncond = _randn(1, (1, 8, 16), (1, 6, 16))
    return pipe, dict(
        prompt_embeds=cond, prompt_embeds_mask=_mask(8, 2), negative_prompt_embeds=uncond,
        negative_prompt_embeds_mask=_mask(6), height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
    )


def hunyuan_video_framepack() -> tuple[Any, dict[str, Any]]:
    """HunyuanVideo Framepack with true CFG (guidance-distilled like HunyuanVideo: ``true_cfg_scale > 1`` and a
    negative prompt make the uncond call); the history and clean latents are identical in both calls."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoFramepackPipeline,
        HunyuanVideoFramepackTransformer3DModel,
    )
    from transformers import SiglipVisionConfig, SiglipVisionModel

    try:
        from transformers import SiglipImageProcessorPil as SiglipImageProcessor
    except ImportError:
        from transformers import SiglipImageProcessor

    pipe = _built(lambda: HunyuanVideoFramepackPipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=HunyuanVideoFramepackTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
            has_image_proj=True, image_proj_dim=8, has_clean_x_embedder=True,
        ),
        vae=AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
            temporal_compression_ratio=4, mid_block_add_attention=True,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        image_encoder=SiglipVisionModel(SiglipVisionConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=8,
        )),
        feature_extractor=SiglipImageProcessor(size={"height": 16, "width": 16}),
    ))
    cond, pooled, uncond, negative_pooled = _randn(1, (1, 8, 16), (1, 8), (1, 8, 16), (1, 8))
    return pipe, dict(
        image=_image(2, 32, 32), prompt_embeds=cond, pooled_prompt_embeds=pooled, prompt_attention_mask=_mask(8, 2),
        negative_prompt_embeds=uncond, negative_pooled_prompt_embeds=negative_pooled,
        negative_prompt_attention_mask=_mask(8), height=32, width=32, num_frames=9, latent_window_size=3,
        num_inference_steps=3, true_cfg_scale=4.0, guidance_scale=6.0, max_sequence_length=8,
    )


def joyimage_edit() -> tuple[Any, dict[str, Any]]:
    """JoyImage Edit (text-to-image without a reference image): norm-rescaled CFG, no ``cache_context``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, JoyImageEditPipeline, JoyImageEditTransformer3DModel

    pipe = _built(lambda: JoyImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_wan_vae(), text_encoder=None, tokenizer=None, processor=None,
        transformer=JoyImageEditTransformer3DModel(
            patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=1,
            rope_dim_list=[4, 6, 6], theta=256,
        ),
    ))
    # its image processor rounds every size to a bucket of about 1024x1024 pixels (the only bucket table), which
    # makes a CPU run take half a minute; keep the size asked for (the CFG loop does not depend on it)
    pipe.vae_image_processor.get_default_height_width = lambda image, height, width: (height, width)
    cond, uncond = _randn(1, (1, 8, 16), (1, 8, 16))
    return pipe, dict(
        prompt_embeds=cond, prompt_embeds_mask=_mask(8, 2), negative_prompt_embeds=uncond,
        negative_prompt_embeds_mask=_mask(8), height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
    )


def kandinsky6() -> tuple[Any, dict[str, Any]]:
    """Kandinsky 6 text-to-video without audio (``sample_audio=False``): two calls in ``cache_context``."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        Kandinsky6TI2VAPipeline,
        Kandinsky6Transformer3DModel,
    )

    pipe = _built(lambda: Kandinsky6TI2VAPipeline(
        transformer=Kandinsky6Transformer3DModel(
            in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=16, patch_size=(1, 2, 2),
            model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 2, 2), visual_cond=False,
            in_audio_dim=4, out_audio_dim=4,
        ),
        vae=AutoencoderKLHunyuanVideo(
            act_fn="silu", block_out_channels=[8, 8], down_block_types=["HunyuanVideoDownBlock3D"] * 2, in_channels=3,
            latent_channels=4, layers_per_block=1, mid_block_add_attention=False, norm_num_groups=2, out_channels=3,
            scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
            up_block_types=["HunyuanVideoUpBlock3D"] * 2,
        ),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    ))
    cond, pooled, uncond, negative_pooled = _randn(1, (1, 8, 32), (1, 16), (1, 6, 32), (1, 16))
    return pipe, dict(
        prompt_embeds=cond, pooled_prompt_embeds=pooled, negative_prompt_embeds=uncond,
        negative_pooled_prompt_embeds=negative_pooled, height=32, width=32, num_frames=5, num_inference_steps=3,
        guidance_scale=5.0, sample_audio=False,
    )


def _word_tokenizer(words: str) -> Any:
    """A tokenizer over a few words, built in memory (no vocabulary download), for pipelines that take prompts
    only; the text encoder it feeds has random weights anyway."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words.split())}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", model_max_length=16)


def longcat_audio_dit() -> tuple[Any, dict[str, Any]]:
    """LongCat-AudioDiT (text-to-audio): takes prompts only, so a word-level tokenizer built in memory and a
    random UMT5 encoder stand in; cond then uncond calls without ``cache_context``."""
    from diffusers import LongCatAudioDiTPipeline, LongCatAudioDiTTransformer, LongCatAudioDiTVae
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _word_tokenizer("soft ocean ambience low quality noise")
    pipe = _built(lambda: LongCatAudioDiTPipeline(
        vae=LongCatAudioDiTVae(
            in_channels=1, channels=16, c_mults=[1, 2], strides=[2], latent_dim=8, encoder_latent_dim=16,
            downsampling_ratio=2, sample_rate=24000,
        ),
        text_encoder=UMT5EncoderModel(UMT5Config(d_model=32, num_layers=1, num_heads=4, d_ff=64, vocab_size=16)),
        tokenizer=tokenizer,
        transformer=LongCatAudioDiTTransformer(
            dit_dim=64, dit_depth=2, dit_heads=4, dit_text_dim=32, latent_dim=8, text_conv=False,
        ),
    ))
    return pipe, dict(
        prompt="soft ocean ambience", negative_prompt="low quality noise", audio_duration_s=0.1,
        num_inference_steps=3, guidance_scale=4.0,
    )


def ideogram4() -> tuple[Any, dict[str, Any]]:
    """Ideogram 4: asymmetric CFG on two denoisers (``transformer`` cond, ``unconditional_transformer`` uncond, other
    inputs, one call each per step). Prompts only: a word-level tokenizer with a plain chat template and a tiny
    random Qwen3-VL model (36 text layers, as the pipeline taps layers 0..35) stand in. Expected: refused."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline, Ideogram4Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLModel

    tokenizer = _word_tokenizer("a red fox in snow")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}"
    hidden, taps = 8, 13  # the pipeline concatenates 13 tapped layers: llm_features_dim = 13 x hidden

    def transformer() -> Any:
        return Ideogram4Transformer2DModel(
            in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2, intermediate_size=32,
            adaln_dim=16, llm_features_dim=taps * hidden, mrope_section=(2, 1, 1),
        )

    pipe = _built(lambda: Ideogram4Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKLFlux2(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False,
        ),
        text_encoder=Qwen3VLModel(Qwen3VLConfig(
            text_config=dict(
                hidden_size=hidden, intermediate_size=16, num_hidden_layers=36, num_attention_heads=2,
                num_key_value_heads=1, head_dim=4, vocab_size=16,
                rope_scaling={"mrope_section": [1, 1, 0], "rope_type": "default"},
            ),
            vision_config=dict(depth=1, hidden_size=8, intermediate_size=16, num_heads=2, out_hidden_size=8),
        )),
        tokenizer=tokenizer, transformer=transformer(), unconditional_transformer=transformer(),
    ))
    return pipe, dict(
        prompt="a red fox", height=32, width=32, num_inference_steps=4, guidance_schedule=[4.0] * 4,
        max_sequence_length=8,
    )


def cosmos3_omni() -> tuple[Any, dict[str, Any]]:
    """Cosmos 3 Omni (text-to-image, one frame): packed per-sample sequences as lists, cond and uncond in
    ``cache_context``; the two calls differ in their packing (input ids, indexes), not in the vision tokens.
    Prompts only: a word-level tokenizer with the two special tokens the pipeline looks up and a plain chat
    template stands in; the safety checker is off (``enable_safety_checker=False``, random weights)."""
    from diffusers import Cosmos3OmniPipeline, Cosmos3OmniTransformer, UniPCMultistepScheduler
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "<|vision_start|>": 2, "<|im_end|>": 3, "a": 4, "dog": 5, "bad": 6, "quality": 7}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", eos_token="<|im_end|>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"

    class NoSafetyChecker:  # required by the constructor; never called with enable_safety_checker=False
        def check_text_safety(self, prompt: str) -> bool:
            return True

        def check_video_safety(self, frames: Any) -> Any:
            return frames

    pipe = _built(lambda: Cosmos3OmniPipeline(
        transformer=Cosmos3OmniTransformer(
            head_dim=6, hidden_act="relu2", hidden_size=6, intermediate_size=12, latent_channel=4, latent_patch_size=1,
            num_attention_heads=1, num_hidden_layers=1, num_key_value_heads=1, patch_latent_dim=4,
            qk_norm_for_text=False, rms_norm_eps=1e-5, rope_axes_dim=[1, 1, 1], vocab_size=len(vocab),
        ),
        text_tokenizer=tokenizer, vae=_wan_vae(), scheduler=UniPCMultistepScheduler(), sound_tokenizer=None,
        safety_checker=NoSafetyChecker(), enable_safety_checker=False,
    ))
    return pipe, dict(
        prompt="a dog", negative_prompt="bad quality", height=16, width=16, num_frames=1, num_inference_steps=3,
        guidance_scale=4.0, use_system_prompt=False, add_resolution_template=False, add_duration_template=False,
    )


def bria_fibo2() -> tuple[Any, dict[str, Any]]:
    """Bria FIBO 2: the negative prompt runs as a second pass (no ``cache_context``); its text embeddings stack
    ``1 + len(injection_layer_ids)`` text-encoder layers, (B, layers, tokens, width), with boolean masks."""
    from diffusers import AutoencoderKLFlux2, BriaFibo2Pipeline, BriaFibo2Transformer2DModel, FlowMatchEulerDiscreteScheduler

    pipe = _built(lambda: BriaFibo2Pipeline(
        transformer=BriaFibo2Transformer2DModel(
            in_channels=4, patch_size=1, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=16,
            injection_layer_ids=(0,), perceiver_num_layers=1, min_num_gist_tokens=4, max_num_gist_tokens=8, gist_step=4,
            gist_min_text_len=4, gist_max_text_len=64, axes_dims=(4, 6, 6), axes_lens=(64, 32, 32),
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKLFlux2(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False,
        ),
        text_encoder=None, processor=None,
    ))
    cond, uncond = _randn(1, (1, 2, 8, 16), (1, 2, 6, 16))
    return pipe, dict(
        prompt_embeds=cond, prompt_embeds_mask=_mask(8, 2, torch.bool), negative_prompt_embeds=uncond,
        negative_prompt_embeds_mask=_mask(6, 0, torch.bool), height=32, width=32, num_inference_steps=3,
        guidance_scale=4.0,
    )


def longcat_image() -> tuple[Any, dict[str, Any]]:
    """LongCat-Image (Flux-like, ``cache_context`` around the uncond call only; text ids differ per branch). Its
    ``encode_prompt`` needs the prompt even when embeddings are given (and ``check_inputs`` forbids both), so
    prompts go through a word-level tokenizer built in memory and a tiny random Qwen2.5-VL; the pipeline's
    512-token text length is cut to 16 for the CPU."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, LongCatImagePipeline, LongCatImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    pipe = _built(lambda: LongCatImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        # the pipeline packs 16 latent channels in 2x2 patches: 64 transformer channels
        vae=AutoencoderKL(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 16), layers_per_block=1,
            latent_channels=16, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        ),
        text_encoder=Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(
                hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                vocab_size=16, rope_scaling={"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
                rope_theta=1000000.0,
            ),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32),
            vocab_size=16,
        )),
        tokenizer=_word_tokenizer("a cat on mat bad quality"), text_processor=None,
        transformer=LongCatImageTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
        ),
    ))
    pipe.tokenizer_max_length = 16
    return pipe, dict(
        prompt="a cat on a mat", negative_prompt="bad quality", height=32, width=32, num_inference_steps=3,
        guidance_scale=4.0, enable_prompt_rewrite=False,
    )


# -- guider pipelines ------------------------------------------------------------------------------------


def hunyuan_image() -> tuple[Any, dict[str, Any]]:
    """HunyuanImage 2.1: an ``AdaptiveProjectedMixGuidance`` guider, one call per guider batch (cond, then
    uncond) in ``cache_context(identifier)``; its momentum runs on the gathered predictions."""
    from diffusers import (
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )
    from diffusers.guiders import AdaptiveProjectedMixGuidance

    pipe = _built(lambda: HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        vae=AutoencoderKLHunyuanImage(
            # its group norms have 32 groups: 32 channels at least
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
            scaling_factor=0.476986, spatial_compression_ratio=8, sample_size=32,
        ),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=HunyuanImageTransformer2DModel(
            in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False, text_embed_dim=32,
            text_embed_2_dim=32, rope_axes_dim=(4, 4),
        ),
        guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=2),
        ocr_guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=3),
    ))
    cond, uncond, cond_2, uncond_2 = _randn(1, (1, 8, 32), (1, 8, 32), (1, 4, 32), (1, 4, 32))
    return pipe, dict(
        prompt_embeds=cond, prompt_embeds_mask=_mask(8, 2), negative_prompt_embeds=uncond,
        negative_prompt_embeds_mask=_mask(8), prompt_embeds_2=cond_2, prompt_embeds_mask_2=_mask(4),
        negative_prompt_embeds_2=uncond_2, negative_prompt_embeds_mask_2=_mask(4), height=32, width=32,
        num_inference_steps=3,
    )


def motif_video() -> tuple[Any, dict[str, Any]]:
    """Motif-Video with a ``ClassifierFreeGuidance`` guider: one call per guider batch (cond, then uncond)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MotifVideoPipeline, MotifVideoTransformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance

    pipe = _built(lambda: MotifVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), vae=_wan_vae(), text_encoder=None, tokenizer=None,
        transformer=MotifVideoTransformer3DModel(
            in_channels=2 * 4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
            num_single_layers=1, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=32,
            rope_axes_dim=(4, 4, 4),
        ),
        guider=ClassifierFreeGuidance(guidance_scale=5.0), feature_extractor=None,
    ))
    cond, uncond = _randn(1, (1, 8, 32), (1, 8, 32))
    return pipe, dict(
        prompt_embeds=cond, prompt_attention_mask=_mask(8, 2), negative_prompt_embeds=uncond,
        negative_prompt_attention_mask=_mask(8), height=16, width=16, num_frames=9, num_inference_steps=3,
    )


# -- the GLM-Image hazard --------------------------------------------------------------------------------


def glm_image() -> tuple[Any, dict[str, Any]]:
    """GLM-Image, image-to-image: **state no argument shows** changes between the two calls of a step.

    With a condition image the pipeline first runs the transformer once per condition image with the KV cache
    in mode "write" (at batch 1, timestep 0: the image's keys and values are stored). Then each step calls
    ``kv_caches.set_mode("read")`` before the cond call (attend to the cached image tokens) and
    ``kv_caches.set_mode("skip")`` before the uncond call (ignore them). The ``kv_caches`` argument is the same
    object in both calls and the mode lives inside it, so the arguments of the uncond call are exactly what a
    two-call predictor predicts (the negative prompt, ``prior_token_drop`` all True, the rest the cond call's),
    yet a predicted uncond call computed during the cond call runs in mode "read", not "skip": its output
    differs from the real uncond call's. A naive ``two_call`` spec returns that wrong output (silently wrong:
    ``tests/test_census_glm_image.py`` shows it). Expected from xcfg without a plugin: the inferred two-call
    style computes the first predicted uncond call for real as well, finds the outputs differ, and runs the
    rest whole with one warning: equal to one process, nothing split (``expect="whole"``).

    No download: prompt embeddings, ``prior_token_ids`` for the target (what the AR model would generate; 4
    tokens for 32x32) and ``prior_token_image_ids`` / ``source_image_grid_thw`` for the condition image are
    given, so neither the tokenizer, the processor nor the vision-language model is needed.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel

    pipe = _built(lambda: GlmImagePipeline(
        tokenizer=None, processor=None, text_encoder=None, vision_language_encoder=None,
        # patch_size x vae_scale_factor = 16: the AR tokens are upsampled 2x from 1/32 of the image
        vae=AutoencoderKL(
            block_out_channels=(4, 8, 16, 16), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=4, sample_size=128,
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        ),
        transformer=GlmImageTransformer2DModel(
            patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            text_embed_dim=32, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=128,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    ))
    generator = torch.Generator().manual_seed(3)
    cond, uncond = _randn(1, (1, 8, 32), (1, 8, 32))
    return pipe, dict(
        prompt_embeds=cond, negative_prompt_embeds=uncond, height=32, width=32, num_inference_steps=3,
        guidance_scale=1.5,
        prior_token_ids=torch.randint(0, 128, (1, 4), generator=generator),
        image=[_image(2, 32, 32)],
        prior_token_image_ids=[torch.randint(0, 128, (4,), generator=generator)],
        source_image_grid_thw=[torch.tensor([[1, 2, 2]])],
    )


CASES = [
    # the two-call and guider plugins' examples (xcfg_plugins/), by name
    Case(pipeline="WanVACEPipeline", example="wan-vace", note="plugin; two experts, control video in both calls"),
    Case(pipeline="WanAnimatePipeline", example="wan-animate", note="plugin; face blanked in the uncond call"),
    Case(pipeline="Flux2KleinPipeline", example="flux2-klein", note="plugin; step-distilled Klein refused"),
    Case(pipeline="QwenImage21Pipeline", example="qwenimage21", note="plugin; one KV cache per branch"),
    Case(pipeline="HunyuanVideo15Pipeline", example="hunyuan-video15", note="plugin; guider (CFG)"),
    Case(pipeline="CogView4Pipeline", example="cogview4", note="plugin"),
    Case(pipeline="ChromaPipeline", example="chroma", note="plugin; no cache_context"),
    Case(pipeline="Lumina2Pipeline", example="lumina2", note="plugin; CFG truncation"),
    Case(pipeline="Kandinsky5T2VPipeline", example="kandinsky5", note="plugin; no cache_context"),
    Case(pipeline="SkyReelsV2Pipeline", example="skyreels-v2", note="plugin"),
    Case(pipeline="Cosmos2_5_PredictBasePipeline", example="cosmos2.5", note="plugin; Video2World refused"),
    # two-call pipelines without a plugin (the inferred two-call style)
    Case(pipeline="ChronoEditPipeline", build=chronoedit, output="frames", note="two-call, Wan-based image editing"),
    Case(pipeline="HeliosPipeline", build=helios, output="frames", note="two-call; history latents shared"),
    Case(pipeline="Krea2Pipeline", build=krea2, note="two-call, no cache_context"),
    Case(pipeline="OvisImagePipeline", build=ovis_image, note="two-call"),
    Case(pipeline="NucleusMoEImagePipeline", build=nucleusmoe_image, note="two-call, norm-rescaled CFG"),
    Case(pipeline="JoyImageEditPipeline", build=joyimage_edit, note="two-call, no cache_context"),
    Case(pipeline="BriaFibo2Pipeline", build=bria_fibo2, note="two-call, no cache_context; stacked text layers"),
    Case(pipeline="LongCatImagePipeline", build=longcat_image, note="two-call; prompts through an in-memory tokenizer"),
    Case(pipeline="Kandinsky6TI2VAPipeline", build=kandinsky6, output="frames", note="two-call, video only"),
    Case(
        pipeline="LongCatAudioDiTPipeline", build=longcat_audio_dit, output="audios",
        note="two-call text-to-audio; prompts through a word-level tokenizer built in memory",
    ),
    Case(
        pipeline="Cosmos3OmniPipeline", build=cosmos3_omni, output="video",
        note="plugin (cosmos); two-call with packed per-sample lists; prompts through an in-memory tokenizer",
    ),
    Case(
        pipeline="Ideogram4Pipeline", build=ideogram4, expect="refused",
        note="two denoisers (asymmetric CFG): nothing to split or pair; refused by the ideogram4 plugin",
    ),
    Case(
        pipeline="HunyuanVideoFramepackPipeline", build=hunyuan_video_framepack, output="frames",
        note="true CFG (guidance-distilled transformer); history latents shared",
    ),
    Case(pipeline="HunyuanImagePipeline", build=hunyuan_image, note="guider (APG-mix), cache_context(identifier)"),
    Case(pipeline="MotifVideoPipeline", build=motif_video, output="frames", note="guider (CFG)"),
    # the hazard: a hidden KV-cache mode flip between the cond and uncond calls; must run whole, never wrong
    Case(
        pipeline="GlmImagePipeline", build=glm_image, expect="whole",
        note="hazard: kv_caches.set_mode('skip') between cond and uncond; the first predicted uncond call fails "
        "verification, so it runs whole",
    ),
]

# Two-call pipelines of coverage.md section 4 with no tiny build here, and why (for tests/census/unbuilt.py): none.
NOT_BUILT: dict[str, str] = {}
