"""Census cases for the batched-CFG pipelines (one denoiser call per step on the [uncond, cond] batch).

Each ``build()`` makes a tiny fp32 CPU pipeline from configs with seeded random weights and returns it
with the call's keyword arguments: prompt embeddings instead of prompts (no tokenizer, no download),
2 steps, CFG on. The comment above each case names the forward arguments that carry the CFG batch in
that pipeline's denoiser call: what a plugin would declare, and what the inferred mode should find.
Sizes that work were taken as facts from diffusers' own tests (``tests/pipelines/<family>/``).
"""

from __future__ import annotations

from typing import Any

import torch

from census.case import Case

SEED = 0


def _build(make: Any) -> Any:
    """``make()`` under a fixed seed in fp32 on the CPU, every module in eval mode, the caller's RNG kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        pipe = make()
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _embeds(length: int, width: int, *, mask: str | None = None, **names: str) -> dict[str, torch.Tensor]:
    """Random positive and negative prompt embeddings (1, length, width), and all-ones masks if ``mask``
    names the mask arguments as ``"prompt_attention_mask,negative_prompt_attention_mask"``."""
    positive, negative = names.get("positive", "prompt_embeds"), names.get("negative", "negative_prompt_embeds")
    found = {positive: _randn(1, length, width, seed=1), negative: _randn(1, length, width, seed=2)}
    if mask:
        for name in mask.split(","):
            found[name] = torch.ones(1, length)
    return found


def _tiny_vae(**overrides: Any) -> Any:
    from diffusers import AutoencoderKL

    config = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4, layers_per_block=1,
        norm_num_groups=2,
    )
    return AutoencoderKL(**{**config, **overrides})


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


# -- DiT: hidden_states, timestep, class_labels ([cond, null] order; learned sigma split on channels) ------
def dit() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    pipe = _build(lambda: DiTPipeline(
        transformer=DiTTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
            out_channels=8, norm_num_groups=2,
        ),
        vae=_tiny_vae(),
        scheduler=DDIMScheduler(),
    ))
    return pipe, dict(class_labels=[1], guidance_scale=4.0, num_inference_steps=2)


# -- Latte: hidden_states, timestep, encoder_hidden_states (encoder_attention_mask where given) -------------
def latte() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    pipe = _build(lambda: LattePipeline(
        tokenizer=None, text_encoder=None,
        transformer=LatteTransformer3DModel(
            sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=16,
            in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            video_length=2,
        ),
        vae=_tiny_vae(), scheduler=DDIMScheduler(),
    ))
    return pipe, dict(height=16, width=16, video_length=2, guidance_scale=5.0, num_inference_steps=2,
                      clean_caption=False, mask_feature=False, negative_prompt=None, **_embeds(6, 16))


# -- Lumina-Next: hidden_states, timestep, encoder_hidden_states, encoder_mask ([cond, uncond] order);
#    image_rotary_emb is shared ------------------------------------------------------------------------------
def lumina() -> tuple[Any, dict[str, Any]]:
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaNextDiT2DModel, LuminaPipeline

    pipe = _build(lambda: LuminaPipeline(
        transformer=LuminaNextDiT2DModel(
            sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_attention_heads=2,
            num_kv_heads=2, multiple_of=16, learn_sigma=True, qk_norm=True, cross_attention_dim=8,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_tiny_vae(), text_encoder=None, tokenizer=None,
    ))
    return pipe, dict(height=16, width=16, guidance_scale=4.0, num_inference_steps=2,
                      **_embeds(6, 8, mask="prompt_attention_mask,negative_prompt_attention_mask"))


# -- Kandinsky 3: sample, timestep, encoder_hidden_states, encoder_attention_mask ---------------------------
def kandinsky3() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet, VQModel

    pipe = _build(lambda: Kandinsky3Pipeline(
        tokenizer=None, text_encoder=None,
        unet=Kandinsky3UNet(
            in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
            block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=16,
        ),
        scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", steps_offset=1, clip_sample=True),
        movq=VQModel(
            block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
            num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
            vq_embed_dim=4,
        ),
    ))
    return pipe, dict(height=16, width=16, guidance_scale=3.0, num_inference_steps=2,
                      **_embeds(6, 16, mask="attention_mask,negative_attention_mask"))


# -- PRX: hidden_states, timestep, encoder_hidden_states, attention_mask ------------------------------------
def prx() -> tuple[Any, dict[str, Any]]:
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPipeline, PRXTransformer2DModel

    pipe = _build(lambda: PRXPipeline(
        transformer=PRXTransformer2DModel(
            patch_size=1, in_channels=4, context_in_dim=8, hidden_size=8, mlp_ratio=2.0, num_heads=2, depth=1,
            axes_dim=[2, 2],
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=None, tokenizer=None,
        vae=_tiny_vae(block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",),
                      up_block_types=("UpDecoderBlock2D",), norm_num_groups=1, use_quant_conv=False,
                      use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0),
    ))
    return pipe, dict(height=8, width=8, guidance_scale=4.0, num_inference_steps=2, use_resolution_binning=False,
                      **_embeds(6, 8, mask="prompt_attention_mask,negative_prompt_attention_mask"))


# -- CogView3-Plus: hidden_states, encoder_hidden_states, timestep, original_size, target_size, crop_coords --
def cogview3plus() -> tuple[Any, dict[str, Any]]:
    from diffusers import CogVideoXDDIMScheduler, CogView3PlusPipeline, CogView3PlusTransformer2DModel

    pipe = _build(lambda: CogView3PlusPipeline(
        tokenizer=None, text_encoder=None, vae=_tiny_vae(),
        transformer=CogView3PlusTransformer2DModel(
            patch_size=2, in_channels=4, num_layers=1, attention_head_dim=4, num_attention_heads=2, out_channels=4,
            text_embed_dim=16, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8,
        ),
        scheduler=CogVideoXDDIMScheduler(),
    ))
    return pipe, dict(height=16, width=16, guidance_scale=6.0, num_inference_steps=2, **_embeds(6, 16))


# -- Kolors: the SDXL UNet (plugin unet): sample, encoder_hidden_states, added_cond_kwargs text_embeds and
#    time_ids. KolorsPipeline is exported only with sentencepiece installed (its ChatGLM tokenizer); the
#    class itself imports without it ---------------------------------------------------------------------
def kolors() -> tuple[Any, dict[str, Any]]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from diffusers.pipelines.kolors.pipeline_kolors import KolorsPipeline

    pipe = _build(lambda: KolorsPipeline(
        vae=_tiny_vae(), text_encoder=None, tokenizer=None,
        unet=UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=4, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=8 + 24,
            cross_attention_dim=16, norm_num_groups=4,
        ),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
        image_encoder=None, feature_extractor=None,
    ))
    pooled = {"pooled_prompt_embeds": _randn(1, 8, seed=3), "negative_pooled_prompt_embeds": _randn(1, 8, seed=4)}
    return pipe, dict(height=16, width=16, guidance_scale=5.0, num_inference_steps=2, **_embeds(6, 16), **pooled)


# -- AnimateDiff (UNetMotionModel): sample (2B, C, F, H, W), timestep, encoder_hidden_states (added_cond_kwargs
#    and ControlNet residuals in its SDXL / ControlNet variants) ---------------------------------------------
def animatediff() -> tuple[Any, dict[str, Any]]:
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    channels = (8, 8)
    pipe = _build(lambda: AnimateDiffPipeline(
        vae=_tiny_vae(block_out_channels=channels), text_encoder=None, tokenizer=None,
        unet=UNet2DConditionModel(
            block_out_channels=channels, layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=8, norm_num_groups=2,
        ),
        motion_adapter=MotionAdapter(block_out_channels=channels, motion_layers_per_block=1, motion_norm_num_groups=2,
                                     motion_num_attention_heads=2),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False),
        feature_extractor=None, image_encoder=None,
    ))
    return pipe, dict(height=16, width=16, num_frames=2, guidance_scale=7.5, num_inference_steps=2, **_embeds(6, 8))


# -- Stable Video Diffusion (UNetSpatioTemporalConditionModel): sample, encoder_hidden_states (the CLIP image
#    embedding, zeros for uncond), added_time_ids; timestep is one value -------------------------------------
def svd() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    pipe = _build(lambda: StableVideoDiffusionPipeline(
        vae=AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                         down_block_types=["DownEncoderBlock2D"] * 2, latent_channels=4,
                                         layers_per_block=1),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            intermediate_size=16, patch_size=4,
        )),
        unet=UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=16,
            num_attention_heads=2, projection_class_embeddings_input_dim=3 * 8, addition_time_embed_dim=8,
        ),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
            prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
            timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
        ),
        feature_extractor=CLIPImageProcessor(crop_size=16, size=16),
    ))
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return pipe, dict(image=image, height=16, width=16, num_frames=2, min_guidance_scale=1.0, max_guidance_scale=2.5,
                      num_inference_steps=2, decode_chunk_size=2)


# -- Sana-Video: hidden_states, encoder_hidden_states, encoder_attention_mask, timestep ---------------------
def sana_video() -> tuple[Any, dict[str, Any]]:
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel

    pipe = _build(lambda: SanaVideoPipeline(
        tokenizer=None, text_encoder=None, vae=_wan_vae(), scheduler=DPMSolverMultistepScheduler(),
        transformer=SanaVideoTransformer3DModel(
            in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=12, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=8,
            mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2), norm_elementwise_affine=False, norm_eps=1e-6,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ),
    ))
    return pipe, dict(height=32, width=32, frames=9, guidance_scale=6.0, num_inference_steps=2,
                      complex_human_instruction=[], use_resolution_binning=False, negative_prompt=None,
                      **_embeds(6, 8, mask="prompt_attention_mask,negative_prompt_attention_mask"))


# -- AnyFlow: hidden_states, timestep and r_timestep ([2B, frames]), encoder_hidden_states ------------------
def anyflow() -> tuple[Any, dict[str, Any]]:
    from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, FlowMapEulerDiscreteScheduler

    pipe = _build(lambda: AnyFlowPipeline(
        tokenizer=None, text_encoder=None, vae=_wan_vae(),
        scheduler=FlowMapEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
        transformer=AnyFlowTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
            gate_value=0.25, deltatime_type="r",
        ),
    ))
    return pipe, dict(height=16, width=16, num_frames=9, guidance_scale=6.0, num_inference_steps=2, **_embeds(6, 16))


# -- Bria: hidden_states, encoder_hidden_states, timestep; txt_ids / img_ids are shared ------------------
def bria() -> tuple[Any, dict[str, Any]]:
    from diffusers import BriaPipeline, BriaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    pipe = _build(lambda: BriaPipeline(
        transformer=BriaTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4],
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=None, tokenizer=None,
        vae=_tiny_vae(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                      up_block_types=("UpDecoderBlock2D",), shift_factor=0, scaling_factor=0.13025),
        image_encoder=None, feature_extractor=None,
    ))
    return pipe, dict(height=16, width=16, guidance_scale=5.0, num_inference_steps=2, max_sequence_length=6,
                      **_embeds(6, 16))



# -- EasyAnimate: hidden_states, timestep, encoder_hidden_states (control_latents / inpaint_latents in its
#    control and inpaint pipelines) ---------------------------------------------------------------------------
def easyanimate() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLMagvit,
        EasyAnimatePipeline,
        EasyAnimateTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    pipe = _build(lambda: EasyAnimatePipeline(
        vae=AutoencoderKLMagvit(
            in_channels=3, out_channels=3,
            down_block_types=("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 3,
            up_block_types=("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 3,
            block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
            spatial_group_norm=False,
        ),
        text_encoder=None, tokenizer=None, scheduler=FlowMatchEulerDiscreteScheduler(),
        transformer=EasyAnimateTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
            text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, patch_size=2,
        ),
    ))
    return pipe, dict(height=16, width=16, num_frames=5, guidance_scale=6.0, num_inference_steps=2,
                      **_embeds(6, 16, mask="prompt_attention_mask,negative_prompt_attention_mask"))


# -- AudioLDM 2: sample, encoder_hidden_states (the GPT-2 generated embeddings), encoder_hidden_states_1 (T5),
#    encoder_attention_mask_1; timestep is one value ---------------------------------------------------------
def audioldm2() -> tuple[Any, dict[str, Any]]:
    from diffusers import AudioLDM2Pipeline, AudioLDM2UNet2DConditionModel, DDIMScheduler
    from transformers import GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    pipe = _build(lambda: AudioLDM2Pipeline(
        vae=_tiny_vae(in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8),
        # the pipeline reads the T5 encoder's config and the language model's dtype, never runs them here
        text_encoder=None,
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_ff=16, d_kv=8, num_heads=1, num_layers=1)),
        language_model=GPT2LMHeadModel(GPT2Config(n_embd=8, n_head=1, n_layer=1, vocab_size=32, n_positions=16)),
        projection_model=None, tokenizer=None, tokenizer_2=None, feature_extractor=None,
        unet=AudioLDM2UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(8, 16),
        ),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False),
        vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
            upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            normalize_before=False,
        )),
    ))
    generated = {"generated_prompt_embeds": _randn(1, 6, 16, seed=3), "negative_generated_prompt_embeds": _randn(1, 6, 16, seed=4)}
    return pipe, dict(guidance_scale=6.0, num_inference_steps=2, audio_length_in_s=0.1, **generated,
                      **_embeds(6, 16, mask="attention_mask,negative_attention_mask"))


# -- Stable Cascade prior (StableCascadeUNet, [cond, uncond] order): sample, timestep_ratio, clip_text_pooled,
#    clip_text, clip_img ------------------------------------------------------------------------------------
def stable_cascade_prior() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline, StableCascadeUNet
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    pipe = _build(lambda: StableCascadePriorPipeline(
        tokenizer=None,  # the pipeline reads the text encoder's dtype, never runs it here
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=16, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=32,
            projection_dim=16,
        )), scheduler=DDPMWuerstchenScheduler(), feature_extractor=None,
        image_encoder=None,
        prior=StableCascadeUNet(
            conditioning_dim=32, block_out_channels=(32, 32), num_attention_heads=(2, 2),
            down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), switch_level=(False,),
            clip_image_in_channels=16, clip_text_in_channels=16, clip_text_pooled_in_channels=16, dropout=(0.0, 0.0),
        ),
    ))
    pooled = {"prompt_embeds_pooled": _randn(1, 1, 16, seed=3), "negative_prompt_embeds_pooled": _randn(1, 1, 16, seed=4)}
    return pipe, dict(height=64, width=64, guidance_scale=4.0, num_inference_steps=2, **pooled, **_embeds(6, 16))



# -- Stable Audio 3: hidden_states, timestep (2B,), encoder_hidden_states, encoder_attention_mask,
#    global_hidden_states ------------------------------------------------------------------------------------
def stable_audio3() -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder

    pipe = _build(lambda: StableAudio3Pipeline(
        vae=AutoencoderSAME(
            audio_channels=2, patch_size=2, encoder_channels=8, encoder_c_mults=(2,), encoder_strides=(2,),
            encoder_transformer_depths=(1,), latent_dim=8, use_differential_attention=False, dim_heads=4, ff_mult=2,
            sampling_rate=16,
        ),
        text_encoder=None, tokenizer=None,
        duration_embedder=StableAudio3DurationEmbedder(output_dim=16, fourier_dim=16),
        transformer=StableAudio3DiTModel(
            io_channels=8, patch_size=1, embed_dim=32, depth=2, num_heads=4, cond_token_dim=16, global_cond_dim=16,
            local_add_cond_dim=5, timestep_features_dim=16, ff_mult=2, num_memory_tokens=3,
            use_differential_attention=False,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=False),
    ))
    return pipe, dict(duration=1.0, guidance_scale=5.0, num_inference_steps=2,
                      **_embeds(6, 16, mask="encoder_attention_mask,negative_encoder_attention_mask"))


# -- ERNIE-Image: hidden_states, timestep, text_bth (the padded [uncond, cond] text states), text_lens --------
def ernie_image() -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderKLFlux2, ErnieImagePipeline, ErnieImageTransformer2DModel, FlowMatchEulerDiscreteScheduler

    pipe = _build(lambda: ErnieImagePipeline(
        transformer=ErnieImageTransformer2DModel(
            hidden_size=16, num_attention_heads=1, num_layers=1, ffn_hidden_size=16, in_channels=16, out_channels=16,
            patch_size=1, text_in_dim=16, rope_theta=256, rope_axes_dim=(8, 4, 4), eps=1e-6, qk_layernorm=True,
        ),
        vae=AutoencoderKLFlux2(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                               up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=2,
                               use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=None, tokenizer=None, scheduler=FlowMatchEulerDiscreteScheduler(),
    ))
    # the prompt embeddings are lists of per-prompt (length, width) states, of different lengths
    return pipe, dict(height=16, width=16, guidance_scale=4.0, num_inference_steps=2, use_pe=False,
                      prompt_embeds=[_randn(6, 16, seed=1)], negative_prompt_embeds=[_randn(4, 16, seed=2)])


# -- AnyFlow FAR (autoregressive chunks with a KV cache): hidden_states, timestep / r_timestep, encoder_hidden_states;
#    the cache is filled per chunk, so a rank's cache holds only its half of the batch ------------------------
def anyflow_far() -> tuple[Any, dict[str, Any]]:
    from diffusers import AnyFlowFARPipeline, AnyFlowFARTransformer3DModel, FlowMapEulerDiscreteScheduler

    pipe = _build(lambda: AnyFlowFARPipeline(
        tokenizer=None, text_encoder=None, vae=_wan_vae(),
        scheduler=FlowMapEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
        transformer=AnyFlowFARTransformer3DModel(
            patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, num_attention_heads=2,
            attention_head_dim=12, in_channels=16, out_channels=16, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2,
            cross_attn_norm=True, rope_max_seq_len=32, gate_value=0.25, deltatime_type="r", chunk_partition=(1, 1, 1),
        ),
    ))
    return pipe, dict(height=16, width=16, num_frames=9, guidance_scale=6.0, num_inference_steps=2, **_embeds(6, 16))



def _word_tokenizer(max_length: int) -> Any:
    """A word-level tokenizer made in memory (no vocabulary file, no download), for the pipelines that take
    only prompts: every word of the prompts used here has an id, anything else is ``[UNK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "red", "fox", "in", "snow", "blurry", "low", "quality", ""]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words) if w}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", model_max_length=max_length)


# -- Kandinsky 2.1 prior (PriorTransformer): hidden_states, timestep, proj_embedding, encoder_hidden_states,
#    attention_mask. The pipeline takes prompts only: a word-level tokenizer and a tiny CLIP text encoder ----
def kandinsky_prior() -> tuple[Any, dict[str, Any]]:
    from diffusers import KandinskyPriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    def make() -> Any:
        prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=16, num_layers=1)
        prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))  # 0 would zero every output
        return KandinskyPriorPipeline(
            prior=prior,
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=16, image_size=32, projection_dim=16, intermediate_size=16, num_attention_heads=2,
                num_hidden_layers=1, patch_size=8,
            )),
            text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(
                bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_size=16, projection_dim=16, intermediate_size=16,
                num_attention_heads=2, num_hidden_layers=1, vocab_size=16, max_position_embeddings=77,
            )),
            tokenizer=_word_tokenizer(77),  # the prior's 77 text positions
            scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                      clip_sample=True, clip_sample_range=10.0),
            image_processor=CLIPImageProcessor(crop_size=32, size=32),
        )

    return _build(make), dict(prompt="a red fox in snow", negative_prompt="blurry", guidance_scale=4.0,
                              num_inference_steps=2)



def _movq() -> Any:
    from diffusers import VQModel

    return VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], in_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12,
        out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4,
    )


def _kandinsky22_unet(in_channels: int, addition: str) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        in_channels=in_channels, out_channels=8, addition_embed_type=addition,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(8, 16), layers_per_block=1, encoder_hid_dim=16, encoder_hid_dim_type="image_proj",
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4, resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )


def _kandinsky22_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


# -- Kandinsky 2.2 decoder (plugin unet): sample, timestep, added_cond_kwargs['image_embeds'] (the prior's image
#    embedding, zeros-like negative first); encoder_hidden_states is None -----------------------------------
def kandinsky22() -> tuple[Any, dict[str, Any]]:
    from diffusers import KandinskyV22Pipeline

    pipe = _build(lambda: KandinskyV22Pipeline(unet=_kandinsky22_unet(4, "image"), scheduler=_kandinsky22_scheduler(),
                                               movq=_movq()))
    return pipe, dict(image_embeds=_randn(1, 16, seed=1), negative_image_embeds=_randn(1, 16, seed=2), height=16,
                      width=16, guidance_scale=4.0, num_inference_steps=2)


# -- Kandinsky 2.2 ControlNet (plugin unet): as the decoder, plus added_cond_kwargs['hint'] (the depth hint) -----
def kandinsky22_controlnet() -> tuple[Any, dict[str, Any]]:
    from diffusers import KandinskyV22ControlnetPipeline

    pipe = _build(lambda: KandinskyV22ControlnetPipeline(unet=_kandinsky22_unet(8, "image_hint"),
                                                         scheduler=_kandinsky22_scheduler(), movq=_movq()))
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # embedded 8x smaller: the latents
    return pipe, dict(image_embeds=_randn(1, 16, seed=1), negative_image_embeds=_randn(1, 16, seed=2), hint=hint,
                      height=16, width=16, guidance_scale=4.0, num_inference_steps=2)


# -- SD 1.5 with a T2I-Adapter (plugin unet): sample, timestep, encoder_hidden_states,
#    down_intrablock_additional_residuals (the adapter's features, repeated for CFG) ---------------------------
def sd_adapter() -> tuple[Any, dict[str, Any]]:
    from diffusers import PNDMScheduler, StableDiffusionAdapterPipeline, T2IAdapter, UNet2DConditionModel

    pipe = _build(lambda: StableDiffusionAdapterPipeline(
        vae=_tiny_vae(block_out_channels=(8, 16), norm_num_groups=4), text_encoder=None, tokenizer=None,
        unet=UNet2DConditionModel(
            block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        ),
        adapter=T2IAdapter(in_channels=3, channels=[16, 32], num_res_blocks=1, downscale_factor=2,
                           adapter_type="full_adapter"),
        scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ))
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return pipe, dict(image=image, height=16, width=16, guidance_scale=7.5, num_inference_steps=2, **_embeds(6, 16))


# -- SD x4 upscaler (plugin unet): sample (the latents and the low-resolution image, concatenated), timestep,
#    encoder_hidden_states, class_labels (the noise level) ---------------------------------------------------
def sd_upscale() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    pipe = _build(lambda: StableDiffusionUpscalePipeline(
        vae=_tiny_vae(block_out_channels=(8, 8), scaling_factor=0.08333),
        text_encoder=None, tokenizer=None,
        unet=UNet2DConditionModel(
            block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=7, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, num_class_embeds=100,
        ),
        low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, watermarker=None, max_noise_level=350,
    ))
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    return pipe, dict(image=image, guidance_scale=6.0, noise_level=20, num_inference_steps=2, **_embeds(6, 16))



# -- ACE-Step ([cond, null] order; APG guidance on the gathered output): hidden_states, timestep, timestep_r,
#    encoder_hidden_states, context_latents (and their masks). The pipeline takes prompts and lyrics only: a
#    word-level tokenizer and a tiny Qwen3 text encoder ------------------------------------------------------
def ace_step() -> tuple[Any, dict[str, Any]]:
    from diffusers import AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer, AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    small = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                 rope_theta=10000.0, sliding_window=16)

    def make() -> Any:
        return AceStepPipeline(
            transformer=AceStepTransformer1DModel(num_hidden_layers=2, in_channels=24, audio_acoustic_hidden_dim=8,
                                                  patch_size=2, **small),
            condition_encoder=AceStepConditionEncoder(text_hidden_dim=16, timbre_hidden_dim=8,
                                                      num_lyric_encoder_hidden_layers=1,
                                                      num_timbre_encoder_hidden_layers=1, **small),
            vae=AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[1, 2], decoder_channels=3,
                                   decoder_input_channels=8, audio_channels=2, channel_multiples=[2, 4], sampling_rate=4),
            text_encoder=Qwen3Model(Qwen3Config(num_hidden_layers=1, vocab_size=16, max_position_embeddings=64,
                                                **{k: v for k, v in small.items() if k != "sliding_window"})),
            tokenizer=_word_tokenizer(16),
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
            audio_tokenizer=AceStepAudioTokenizer(audio_acoustic_hidden_dim=8, pool_window_size=2, fsq_dim=16,
                                                  fsq_input_levels=[4, 4, 4], fsq_input_num_quantizers=1,
                                                  num_attention_pooler_hidden_layers=1, **small),
            audio_token_detokenizer=AceStepAudioTokenDetokenizer(audio_acoustic_hidden_dim=8, pool_window_size=2,
                                                                 num_attention_pooler_hidden_layers=1, **small),
        )

    return _build(make), dict(prompt="a red fox", lyrics="in snow", audio_duration=2.0, guidance_scale=7.0,
                              num_inference_steps=2, max_text_length=16, max_lyric_length=16)



# -- Bria FIBO: hidden_states, encoder_hidden_states, timestep, text_encoder_layers (a list of per-layer text
#    states, each batched); txt_ids / img_ids are shared. The pipeline takes prompts only (a JSON caption): a
#    word-level tokenizer and a tiny SmolLM3 text encoder --------------------------------------------------
def bria_fibo() -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderKLWan, BriaFiboPipeline, BriaFiboTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    pipe = _build(lambda: BriaFiboPipeline(
        transformer=BriaFiboTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=64, text_encoder_dim=32, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4],
        ),
        vae=AutoencoderKLWan(base_dim=16, decoder_base_dim=16, num_res_blocks=1, out_channels=12, patch_size=2,
                             scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
                             z_dim=16),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=SmolLM3ForCausalLM(SmolLM3Config(hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=16,
                                                      pad_token_id=0, bos_token_id=2, eos_token_id=3)),
        tokenizer=_word_tokenizer(16),
    ))
    return pipe, dict(prompt="{'text': 'a red fox in snow'}", negative_prompt="blurry", height=32, width=32,
                      guidance_scale=5.0, num_inference_steps=2, max_sequence_length=16)



# -- Stable unCLIP: a prior (PriorTransformer: hidden_states, timestep, proj_embedding, encoder_hidden_states,
#    attention_mask) and then the UNet (plugin unet: sample, timestep, encoder_hidden_states, class_labels = the
#    noised image embedding), both on [uncond, cond]. Prompts only: word-level tokenizers, tiny CLIP encoders ----
def stable_unclip() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDIMScheduler, DDPMScheduler, PriorTransformer, StableUnCLIPPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_size=16, projection_dim=16, intermediate_size=16,
                num_attention_heads=2, num_hidden_layers=1, vocab_size=16, max_position_embeddings=77)

    def make() -> Any:
        prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=16, num_layers=1)
        prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))  # 0 would zero every output
        return StableUnCLIPPipeline(
            prior_tokenizer=_word_tokenizer(77), prior_text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip)),
            prior=prior,
            prior_scheduler=DDPMScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                          num_train_timesteps=1000, clip_sample=True, clip_sample_range=5.0,
                                          beta_schedule="squaredcos_cap_v2"),
            image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=16),
            image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
            tokenizer=_word_tokenizer(77), text_encoder=CLIPTextModel(CLIPTextConfig(**clip)),
            unet=UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32), attention_head_dim=(2, 4),
                class_embed_type="projection", projection_class_embeddings_input_dim=32, cross_attention_dim=16,
                layers_per_block=1, norm_num_groups=4, upcast_attention=True, use_linear_projection=True,
            ),
            scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
            vae=_tiny_vae(),
        )

    return _build(make), dict(prompt="a red fox in snow", negative_prompt="blurry", height=16, width=16,
                              guidance_scale=6.0, prior_guidance_scale=4.0, num_inference_steps=2,
                              prior_num_inference_steps=2)



def _randomize_controlnet(controlnet: Any) -> Any:
    """A fresh ControlNet's output convolutions are zero, so its residuals would be 0 and a wrong split would go
    unseen: small random weights (under the build's seed)."""
    for name, parameter in controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
            torch.nn.init.normal_(parameter, std=0.2)
    return controlnet


# -- SD 1.5 with two ControlNets (MultiControlNetModel, plugin unet): the ControlNets take sample, timestep,
#    encoder_hidden_states and controlnet_cond (a list, one image per ControlNet, each doubled); the UNet takes
#    their summed residuals (down_block_additional_residuals, mid_block_additional_residual) ----------------
def sd_multi_controlnet() -> tuple[Any, dict[str, Any]]:
    from diffusers import ControlNetModel, PNDMScheduler, StableDiffusionControlNetPipeline, UNet2DConditionModel

    def make() -> Any:
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        )
        controlnets = [_randomize_controlnet(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8)))
                       for _ in range(2)]
        return StableDiffusionControlNetPipeline(
            vae=_tiny_vae(), text_encoder=None, tokenizer=None, unet=unet, controlnet=controlnets,
            scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )

    images = [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    return _build(make), dict(image=images, height=16, width=16, guidance_scale=7.5, num_inference_steps=2,
                              controlnet_conditioning_scale=[0.7, 0.5], **_embeds(6, 16))


# -- SDXL ControlNet Union (ControlNetUnionModel, plugin unet): the ControlNet also takes control_type (one-hot
#    control modes repeated to the batch) and added_cond_kwargs text_embeds / time_ids ---------------------
def sdxl_controlnet_union() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        ControlNetUnionModel,
        EulerDiscreteScheduler,
        StableDiffusionXLControlNetUnionPipeline,
        UNet2DConditionModel,
    )

    shared = dict(
        block_out_channels=(16, 32), layers_per_block=1, in_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=8 + 24, cross_attention_dim=16,
        norm_num_groups=4,
    )

    def make() -> Any:
        unet = UNet2DConditionModel(sample_size=8, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    **shared)
        controlnet = ControlNetUnionModel(conditioning_embedding_out_channels=(4, 8), num_trans_channel=16,
                                          num_trans_head=2, num_proj_channel=16, **shared)
        return StableDiffusionXLControlNetUnionPipeline(
            vae=_tiny_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
            controlnet=_randomize_controlnet(controlnet),
            scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                             beta_schedule="scaled_linear", timestep_spacing="leading"),
            add_watermarker=False,
        )

    pooled = {"pooled_prompt_embeds": _randn(1, 8, seed=3), "negative_pooled_prompt_embeds": _randn(1, 8, seed=4)}
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return _build(make), dict(control_image=[image], control_mode=[1], height=16, width=16, guidance_scale=5.0,
                              num_inference_steps=2, **pooled, **_embeds(6, 16))



CASES = [
    # the plugins' examples (plugins unet, ltx2, auraflow, z_image, hidream, stable_audio, consisid)
    Case(pipeline="StableDiffusionPipeline", example="sd15"),
    Case(pipeline="StableDiffusionXLPipeline", example="sdxl"),
    Case(pipeline="StableDiffusionXLControlNetPipeline", example="sdxl-controlnet",
         note="the ControlNet is split beside the UNet"),
    Case(pipeline="StableDiffusionXLPipeline", example="sdxl-ip-adapter", note="IP-Adapter image embeddings split"),
    Case(pipeline="LTX2Pipeline", example="ltx2", output="frames",
         note="STG and modality-isolation passes (batch B) run whole"),
    Case(pipeline="AuraFlowPipeline", example="auraflow"),
    Case(pipeline="ZImagePipeline", example="z-image", note="plugin; the batch is lists of per-sample tensors (per_sample)"),
    Case(pipeline="HiDreamImagePipeline", example="hidream", note="Llama states batched in dim 1"),
    Case(pipeline="StableAudioPipeline", example="stable-audio", output="audios"),
    Case(pipeline="ConsisIDPipeline", example="consisid", output="frames", count_at="patch_embed",
         note="id_vit_hidden / id_cond stay at batch 1 and broadcast"),
    # census builds: the comment above each build names its batch-carrying forward arguments
    Case(pipeline="DiTPipeline", build=dit, note="[cond, null] order"),
    Case(pipeline="LattePipeline", build=latte, output="frames"),
    Case(pipeline="LuminaPipeline", build=lumina, note="[cond, uncond] order"),
    Case(pipeline="Kandinsky3Pipeline", build=kandinsky3),
    Case(pipeline="PRXPipeline", build=prx),
    Case(pipeline="CogView3PlusPipeline", build=cogview3plus),
    Case(pipeline="KolorsPipeline", build=kolors, note="UNet2DConditionModel (plugin unet), SDXL conditioning"),
    Case(pipeline="AnimateDiffPipeline", build=animatediff, output="frames", expect="whole",
         note="encoder_hidden_states has 2B x frames rows (the prompt repeated per frame), which no batch input "
              "describes yet: inference cannot verify a split, so it runs whole"),
    Case(pipeline="StableVideoDiffusionPipeline", build=svd, output="frames"),
    Case(pipeline="SanaVideoPipeline", build=sana_video, output="frames"),
    Case(pipeline="AnyFlowPipeline", build=anyflow, output="frames"),
    Case(pipeline="BriaPipeline", build=bria),
    Case(pipeline="EasyAnimatePipeline", build=easyanimate, output="frames"),
    Case(pipeline="AudioLDM2Pipeline", build=audioldm2, output="audios"),
    Case(pipeline="StableCascadePriorPipeline", build=stable_cascade_prior, output="image_embeddings",
         note="[cond, uncond] order; the denoiser is the pipeline's prior"),
    Case(pipeline="StableAudio3Pipeline", build=stable_audio3, output="audios"),
    Case(pipeline="ErnieImagePipeline", build=ernie_image),
    Case(pipeline="AnyFlowFARPipeline", build=anyflow_far, output="frames", expect="whole",
         note="kv_cache is a list of dicts of 2B tensors the model fills in place per chunk: a split would fill "
              "half of it, so it runs whole"),
    Case(pipeline="KandinskyV22Pipeline", build=kandinsky22),
    Case(pipeline="KandinskyV22ControlnetPipeline", build=kandinsky22_controlnet),
    Case(pipeline="StableDiffusionAdapterPipeline", build=sd_adapter),
    Case(pipeline="StableDiffusionControlNetPipeline", build=sd_multi_controlnet, note="two ControlNets"),
    Case(pipeline="StableDiffusionXLControlNetUnionPipeline", build=sdxl_controlnet_union),
    Case(pipeline="StableDiffusionUpscalePipeline", build=sd_upscale),
    Case(pipeline="BriaFiboPipeline", build=bria_fibo, note="text_encoder_layers: a list of batched tensors"),
    Case(pipeline="AceStepPipeline", build=ace_step, output="audios", note="[cond, null] order"),
    Case(pipeline="StableUnCLIPPipeline", build=stable_unclip, note="a prior, then the UNet; both batched"),
    Case(pipeline="KandinskyPriorPipeline", build=kandinsky_prior, output="image_embeds",
         note="the denoiser is the pipeline's prior"),
]
