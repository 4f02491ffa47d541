"""CogVideoX: text-to-video, image-to-video and video-to-video (``CogVideoX*Pipeline``).

The pipelines batch CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (B, F, C, H, W), ``encoder_hidden_states``,
``timestep`` (B,), ``timestep_cond`` and ``ofs`` (the image-to-video pipelines of CogVideoX 1.5 pass
it). ``image_rotary_emb`` (cos, sin) is the same for every sample and stays whole.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.cogvideox_transformer_3d:CogVideoXTransformer3DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=8,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ),
        "call": dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=6.0, max_sequence_length=8),
        "text": (8, 16),
        "description": "CogVideoX, tiny (2 layers), 9 frames 32x32",
    },
    "small": {  # the CPU demo: enough work per step for the split to pay off on two cores
        "transformer": dict(
            num_attention_heads=8, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=32,
            text_embed_dim=64, num_layers=8, sample_width=8, sample_height=8, sample_frames=13, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=16,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ),
        "call": dict(height=64, width=64, num_frames=13, num_inference_steps=20, guidance_scale=6.0, max_sequence_length=16),
        "text": (16, 64),
        "description": "CogVideoX, small (8 layers, 7M parameters), 13 frames 64x64",
    },
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A CogVideoX text-to-video pipeline with random weights and random prompt embeddings."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return CogVideoXPipeline(
            tokenizer=None,
            text_encoder=None,
            transformer=CogVideoXTransformer3DModel(**config["transformer"]),
            vae=AutoencoderKLCogVideoX(**config["vae"]),
            scheduler=CogVideoXDPMScheduler(timestep_spacing="trailing", prediction_type="v_prediction"),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    kwargs = dict(config["call"])
    kwargs.update(
        _common.embeddings(seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width))
    )
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(
        name="cogvideox",
        summary="CogVideoX text-to-video (batched CFG)",
        build=build,
        sizes=tuple(CONFIGS),
        default=True,
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
