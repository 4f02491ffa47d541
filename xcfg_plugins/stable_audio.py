"""Stable Audio Open (``StableAudioPipeline``).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (2B, C, T), ``encoder_hidden_states`` (the T5
prompt embeddings followed by the start/end-time embeddings), ``global_hidden_states`` (the time
embeddings again, as the global condition) and the two attention masks where given. ``timestep`` is
one value (1,), and the rotary embedding ``rotary_embedding`` (cos, sin) is the same for every sample:
both stay whole.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.stable_audio_transformer:StableAudioDiTModel",
        batch_inputs=["hidden_states", "timestep", "encoder_hidden_states", "global_hidden_states", "attention_mask",
                      "encoder_attention_mask"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            sample_size=4, in_channels=3, num_layers=2, attention_head_dim=4, num_attention_heads=4,
            num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4, time_proj_dim=8,
            global_states_input_dim=8, cross_attention_input_dim=4,
        ),
        "vae": dict(
            encoder_hidden_size=6, downsampling_ratios=[1, 2], decoder_channels=3, decoder_input_channels=3,
            audio_channels=2, channel_multiples=[2, 4], sampling_rate=4,
        ),
        "projection": dict(text_encoder_dim=8, conditioning_dim=4, min_value=0, max_value=32),
        "call": dict(num_inference_steps=3, guidance_scale=7.0, audio_end_in_s=2.0),
        "text": (6, 8),
        "description": "Stable Audio Open, tiny (2 layers), 2 s at 4 Hz",
    },
    # stabilityai/stable-audio-open-1.0: transformer/config.json (1.06B parameters: 24 layers of 24 heads of 64,
    # 12 key/value heads), vae/config.json (Oobleck, 64 latent channels, 44.1 kHz stereo), projection_model/config.json
    # (T5-base width 768, conditioning 768, seconds 0-512); 47 s, 200 steps at guidance 7.
    "full": {
        "transformer": dict(
            sample_size=1024, in_channels=64, num_layers=24, attention_head_dim=64, num_attention_heads=24,
            num_key_value_attention_heads=12, out_channels=64, cross_attention_dim=768, time_proj_dim=256,
            global_states_input_dim=1536, cross_attention_input_dim=768,
        ),
        "vae": dict(
            encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 2, 4, 8, 16],
            decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=44100,
        ),
        "projection": dict(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512),
        "call": dict(num_inference_steps=200, guidance_scale=7.0, audio_end_in_s=47.0),
        "text": (128, 768),
        "description": "Stable Audio Open 1.0, 47 s stereo at 44.1 kHz",
    },
}


# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds
# it on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"stable-audio": {"transformer": 1.06e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A Stable Audio Open pipeline with random weights and random T5 prompt embeddings."""
    from diffusers import AutoencoderOobleck, EDMDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return StableAudioPipeline(
            vae=AutoencoderOobleck(**config["vae"]),
            text_encoder=None,
            projection_model=StableAudioProjectionModel(**config["projection"]),
            tokenizer=None,
            transformer=StableAudioDiTModel(**config["transformer"]),
            scheduler=EDMDPMSolverMultistepScheduler(
                solver_order=2, prediction_type="v_prediction", sigma_data=1.0, sigma_schedule="exponential"
            ),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="audios")


EXAMPLES = (
    xcfg.Example(name="stable-audio", summary="Stable Audio Open text-to-audio (batched CFG)", build=build,
                 sizes=tuple(CONFIGS)),
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
