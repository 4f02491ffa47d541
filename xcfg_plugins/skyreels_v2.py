"""SkyReels V2: text-to-video, image-to-video and diffusion forcing (``SkyReelsV2Pipeline``,
``SkyReelsV2ImageToVideoPipeline``, ``SkyReelsV2DiffusionForcingPipeline`` and its I2V / V2V variants).

The pipelines evaluate CFG in two calls per step at batch B when ``guidance_scale > 1``: the transformer runs on
the prompt inside ``cache_context("cond")``, then on the negative prompt inside ``cache_context("uncond")``, and
the prediction is ``uncond + scale * (cond - uncond)``. Between the two calls only ``encoder_hidden_states``
differs; ``hidden_states``, ``timestep``, ``encoder_hidden_states_image`` (I2V), ``fps`` and
``enable_diffusion_forcing`` are the same. Diffusion forcing denoises the video in overlapping chunks with
per-frame timesteps (``timestep`` of shape (B, frames), the same tensor in both calls): within a chunk the
uncond call is predicted exactly from the chunk's second step on; the first step of each later chunk misses once
(other latents) and makes both calls on every rank. The VAE is ``AutoencoderKLWan``, whose tiled decode the Wan
plugin splits.

The two-call style needs no ``batch_inputs``: nothing is split, each rank computes one whole call.
"""

from __future__ import annotations

from typing import Any

import xcfg

from . import _common, wan

# -- specs -------------------------------------------------------------------------------------------

SPECS = (
    xcfg.ModelSpec(
        model="diffusers.models.transformers.transformer_skyreels_v2:SkyReelsV2Transformer3DModel",
        style="two_call",
    ),
)

# -- examples ----------------------------------------------------------------------------------------

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        # SkyReels V2's transformer and VAE share Wan 2.1's architecture: the Wan example's tiny configs
        "transformer": wan.CONFIGS["tiny"]["transformer"],
        "vae": wan.CONFIGS["tiny"]["vae"],
        "scheduler": dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0),
        "call": dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=6.0, max_sequence_length=8),
        "text": (8, 16),
        "description": "SkyReels V2 T2V, tiny (2 layers), 9 frames 32x32",
    },
    # Skywork/SkyReels-V2-T2V-14B-540P: the transformer as diffusers' scripts/convert_skyreelsv2_to_diffusers.py writes
    # it ("SkyReels-V2-T2V-14B-540P": Wan 2.1 14B's config, inject_sample_info False: 14.3B parameters), the Wan 2.1
    # VAE (the script converts Wan's), UniPC with flow prediction at flow shift 8.0 ("8.0 for T2V", the pipeline
    # docstring). 97 frames 544x960, 50 steps at guidance 6.0 (the pipeline's defaults); UMT5 embeddings (512, 4096).
    "full": {
        "transformer": {**wan.CONFIGS["full"]["transformer"], "inject_sample_info": False},
        "vae": wan.CONFIGS["full"]["vae"],
        "scheduler": dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0),
        "call": dict(
            height=544, width=960, num_frames=97, num_inference_steps=50, guidance_scale=6.0, max_sequence_length=512,
        ),
        "text": (512, 4096),
        "description": "SkyReels-V2-T2V-14B-540P, 97 frames 544x960",
    },
}

# The full example's denoiser parameter count, as the comment above states it (tests/test_full_configs.py builds it
# on the meta device and compares)
PARAMETERS: dict[str, dict[str, float]] = {"skyreels-v2": {"transformer": 14.3e9}}


def build(*, size: str = "tiny", device: Any = None, dtype: Any = None, seed: int = 0) -> xcfg.ExampleRun:
    """A SkyReels V2 text-to-video pipeline with random weights and random prompt embeddings, CFG on."""
    from diffusers import AutoencoderKLWan, SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    device, dtype = _common.resolve(size, device, dtype)
    if size not in CONFIGS:
        raise ValueError(f"the SkyReels V2 example has no size {size!r}")
    config = CONFIGS[size]

    def make() -> Any:
        return SkyReelsV2Pipeline(
            tokenizer=None,
            text_encoder=None,
            transformer=SkyReelsV2Transformer3DModel(**config["transformer"]),
            vae=AutoencoderKLWan(**config["vae"]),
            scheduler=UniPCMultistepScheduler(**config["scheduler"]),
        )

    pipe = _common.build_on(device, dtype, make, seed)
    kwargs = _common.call_kwargs(config, seed, device, dtype)
    return xcfg.ExampleRun(pipe=pipe, kwargs=kwargs, description=config["description"], output="frames")


EXAMPLES = (
    xcfg.Example(name="skyreels-v2", summary="SkyReels V2 text-to-video (two-call CFG)", build=build, sizes=tuple(CONFIGS)),
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
