"""ConsisID: identity-preserving text-to-video (``ConsisIDPipeline``, built on CogVideoX).

The pipeline batches CFG: one transformer call per step on ``torch.cat([negative, positive])``.
Batch-carrying forward arguments: ``hidden_states`` (2B, F, C, H, W), ``encoder_hidden_states`` and
``timestep`` (2B,). The face conditions ``id_cond`` and ``id_vit_hidden`` (a list) come at batch B = 1,
not doubled: the model's face extractor runs once and its perceiver cross-attention broadcasts the
result over the batch, so they are shared and stay whole on every rank. ``image_rotary_emb`` is shared.
``ConsisIDPipeline`` is exported by diffusers only when OpenCV is installed; the class imports without it.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.consisid_transformer_3d:ConsisIDTransformer3DModel",
        batch_inputs=["hidden_states", "encoder_hidden_states", "timestep"],
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "transformer": dict(
            num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
            text_embed_dim=16, num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=6, use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=True, cross_attn_interval=1, is_kps=False, is_train_face=True,
            cross_attn_dim_head=1, cross_attn_num_heads=1, LFE_id_dim=2, LFE_vit_dim=2, LFE_depth=5, LFE_dim_head=8,
            LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=21, LFE_ff_mult=1, LFE_num_scale=1,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ),
        "call": dict(height=16, width=16, num_frames=8, num_inference_steps=3, guidance_scale=6.0, max_sequence_length=6),
        "text": (6, 16),
        "face": dict(id_vit_hidden=(1, 2, 2), id_cond=(1, 2)),
        "description": "ConsisID, tiny (1 layer), 8 frames 16x16",
    },
    # No "full" size: BestWishYsh/ConsisID-preview's transformer/config.json was not found (the class defaults are a
    # CogVideoX-2B-like shape without the face modules, not the published model), so it is not written down here.
}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A ConsisID pipeline with random weights, prompt embeddings, reference image and face features."""
    from diffusers import AutoencoderKLCogVideoX, ConsisIDTransformer3DModel, DDIMScheduler
    from diffusers.pipelines.consisid.pipeline_consisid import ConsisIDPipeline

    device, dtype = _common.resolve(size, device, dtype)
    config = CONFIGS[size]

    def make() -> Any:
        return ConsisIDPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=AutoencoderKLCogVideoX(**config["vae"]),
            transformer=ConsisIDTransformer3DModel(**config["transformer"]),
            scheduler=DDIMScheduler(),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    length, width = config["text"]
    call = config["call"]
    kwargs = dict(call)
    kwargs.update(
        _common.embeddings(seed + 1, device, dtype, prompt_embeds=(1, length, width), negative_prompt_embeds=(1, length, width))
    )
    face = _common.embeddings(seed + 2, device, dtype, image=(1, 3, call["height"], call["width"]), **config["face"])
    kwargs.update(image=face["image"].sigmoid(), id_vit_hidden=[face["id_vit_hidden"]], id_cond=face["id_cond"])
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(name="consisid", summary="ConsisID identity-preserving text-to-video (batched CFG)", build=build,
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
