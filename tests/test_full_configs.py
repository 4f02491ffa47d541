"""The "full" example configs, the published architectures the GPU benchmarks build, checked on the meta device:
no memory, no weights, no GPU. Every registered example offering "full" (parametrized from the registry, so a new
one cannot go untested) builds its whole pipeline there, through its own ``build``; then

- each denoiser (a pipeline component whose class the registry has a model spec for) has the parameter count its
  plugin states (the plugin's ``PARAMETERS``, next to the config and its comment), within 2%;
- the call arguments fit the denoiser's position tables and text limits. A table too small for the resolution,
  the frames or the prompt is indexed out of range, a device-side assert on CUDA (or a shape error), found on a GPU
  machine minutes into a benchmark; here it is arithmetic on the configs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from typing import Any, Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode

import xcfg
from xcfg_plugins import _common

REGISTRY = xcfg.default_registry()
FULL = sorted(example.name for example in REGISTRY.examples() if "full" in example.sizes)
TOLERANCE = 0.02


# the weight initializers (torch.nn.init's and the in-place Tensor methods they call): on a meta tensor they set
# nothing but cost Python time (the prims decompositions), a few seconds over all the full builds
_INITS = {
    "uniform_", "normal_", "zero_", "fill_", "trunc_normal_", "constant_", "zeros_", "ones_", "kaiming_uniform_",
    "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_",
}


class _Meta(TorchFunctionMode):
    """What building on the meta device needs beyond ``with torch.device("meta")``.

    Scheduler constructors copy their tables to the CPU (``self.sigmas.to("cpu")``); on the meta device those
    tables hold no data to copy, so such a copy returns the meta tensor (``_common.build_on`` rebuilds every
    scheduler from its config off the device context afterwards, so none of them is used). And the weight
    initializers are skipped: a meta tensor has no values to set."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if tensor is not None and tensor.is_meta:
            if getattr(func, "__name__", None) in _INITS:
                return tensor
            if func is torch.Tensor.to:
                try:
                    return func(*args, **kwargs)
                except NotImplementedError:  # "Cannot copy out of meta tensor"
                    return tensor
        return func(*args, **kwargs)


def _meta_embeddings(seed: int, device: Any, dtype: Any, **shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``_common.embeddings`` with shapes only: LTX-2's (1, 1024, 188160) prompt would take seconds to draw."""
    return {name: torch.empty(shape, device="meta", dtype=dtype) for name, shape in shapes.items()}


def _module(example: xcfg.Example) -> Any:
    build = example.build
    while isinstance(build, functools.partial):
        build = build.func
    return importlib.import_module(build.__module__)


@functools.lru_cache(maxsize=None)
def _built(name: str) -> tuple[xcfg.ExampleRun, dict[str, torch.nn.Module]]:
    """The example's full build on the meta device, and its denoisers by component name."""
    example = REGISTRY.example(name)
    with pytest.MonkeyPatch.context() as patch, _Meta():
        patch.setattr(_common, "embeddings", _meta_embeddings)
        run = example.build(size="full", device=torch.device("meta"))
    denoisers = {
        key: component
        for key, component in run.pipe.components.items()
        if isinstance(component, torch.nn.Module) and REGISTRY.lookup(type(component)) is not None
    }
    return run, denoisers


@pytest.mark.parametrize("name", FULL)
def test_full_config_builds_on_meta_with_the_stated_parameter_count(name):
    run, denoisers = _built(name)
    stated = getattr(_module(REGISTRY.example(name)), "PARAMETERS", {}).get(name)
    assert stated, f"{name} offers 'full': its plugin's PARAMETERS must state the denoisers' parameter counts"
    assert set(stated) == set(denoisers), f"PARAMETERS names {sorted(stated)}, the pipeline's denoisers are {sorted(denoisers)}"
    for key, module in denoisers.items():
        assert all(p.is_meta for p in module.parameters()), f"{name}.{key} was not built on the meta device"
        count = sum(p.numel() for p in module.parameters())
        assert abs(count - stated[key]) <= TOLERANCE * stated[key], (
            f"{name}.{key} ({type(module).__name__}): {count / 1e9:.3f}B parameters built, {stated[key] / 1e9:.3f}B stated"
        )


@pytest.mark.parametrize("name", FULL)
def test_full_call_arguments_are_the_pipelines(name):
    """A misspelt call argument would fail on the GPU machine only, after the build."""
    run, _ = _built(name)
    params = inspect.signature(type(run.pipe).__call__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        assert set(run.kwargs) <= set(params), f"{name}: {sorted(set(run.kwargs) - set(params))} are not call arguments"


def test_parameters_name_only_full_examples():
    """A PARAMETERS entry for an example without a full size (or a misspelt name) would be checked by nothing."""
    modules = {_module(example) for example in REGISTRY.examples()}
    for module in modules:
        for name in getattr(module, "PARAMETERS", {}):
            assert name in FULL, f"{module.__name__}.PARAMETERS names {name!r}, which offers no 'full' size"


# -- position tables ------------------------------------------------------------------------------------
# Each check returns (what, needed, available) triples for a denoiser and its example's call; needed must not
# exceed available.

Limits = list[tuple[str, int, int]]


def _size(run: xcfg.ExampleRun) -> tuple[int, int]:
    """The latent height and width of the call."""
    pipe = run.pipe
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or pipe.vae_scale_factor
    return run.kwargs["height"] // spatial, run.kwargs["width"] // spatial


def _latent_frames(run: xcfg.ExampleRun) -> int:
    frames = run.kwargs.get("num_frames") or run.kwargs["segment_frame_length"]
    return (frames - 1) // run.pipe.vae_scale_factor_temporal + 1


def _text(run: xcfg.ExampleRun, key: str = "prompt_embeds") -> int:
    return max(run.kwargs[key].shape[1], run.kwargs["negative_" + key].shape[1])


def _auraflow(model: Any, run: xcfg.ExampleRun) -> Limits:
    # the table is a sqrt(max) x sqrt(max) grid of patches; the latent's patches index a centred window of it
    p, side = model.config.patch_size, math.isqrt(model.config.pos_embed_max_size)
    h, w = _size(run)
    return [("patch rows", h // p, side), ("patch columns", w // p, side)]


def _sd3(model: Any, run: xcfg.ExampleRun) -> Limits:
    p, side = model.config.patch_size, model.config.pos_embed_max_size
    h, w = _size(run)
    return [("patch rows", h // p, side), ("patch columns", w // p, side)]


def _cogvideox(model: Any, run: xcfg.ExampleRun) -> Limits:
    c = model.config
    limits = []
    if not c.use_rotary_positional_embeddings or c.use_learned_positional_embeddings:
        # a joint text + patch sin-cos (or learned) table, text first
        limits.append(("text tokens", _text(run), c.max_text_seq_length))
    if c.use_learned_positional_embeddings:  # a table of exactly the sample size: the call must match it
        h, w = _size(run)
        limits += [("latent height", h, c.sample_height), ("latent width", w, c.sample_width)]
        limits.append(("frames", run.kwargs["num_frames"], c.sample_frames))
    return limits


def _wan(model: Any, run: xcfg.ExampleRun) -> Limits:
    # rotary tables of rope_max_seq_len positions per axis, sliced to the patches; one latent frame added for the
    # reference image of Wan-Animate (and of image-to-video)
    p_t, p_h, p_w = model.config.patch_size
    h, w = _size(run)
    limit = model.config.rope_max_seq_len
    return [
        ("latent frames", (_latent_frames(run) + 1) // p_t, limit),
        ("patch rows", h // p_h, limit),
        ("patch columns", w // p_w, limit),
    ]


def _qwenimage(model: Any, run: xcfg.ExampleRun) -> Limits:
    # one table of 4096 positions: the text's positions start after the largest image axis
    p = model.config.patch_size
    h, w = _size(run)
    return [("image axis + text tokens", max(h, w) // p + _text(run), model.pos_embed.pos_freqs.shape[0])]


def _cosmos(model: Any, run: xcfg.ExampleRun) -> Limits:
    p_t, p_h, p_w = model.config.patch_size
    frames, rows, columns = model.rope.max_size
    h, w = _size(run)
    return [
        ("latent frames", _latent_frames(run) // p_t, frames),
        ("patch rows", h // p_h, rows),
        ("patch columns", w // p_w, columns),
    ]


def _kandinsky5(model: Any, run: xcfg.ExampleRun) -> Limits:
    # indexed tables (a device-side assert past their end): text positions, and frames, rows, columns
    p_t, p_h, p_w = model.config.patch_size
    frames, rows, columns = model.visual_rope_embeddings.max_pos
    h, w = _size(run)
    return [
        ("text tokens", _text(run, "prompt_embeds_qwen"), model.text_rope_embeddings.max_pos),
        ("latent frames", _latent_frames(run) // p_t, frames),
        ("patch rows", h // p_h, rows),
        ("patch columns", w // p_w, columns),
    ]


def _lumina2(model: Any, run: xcfg.ExampleRun) -> Limits:
    # gathered tables (a device-side assert past their end): caption positions 0..L-1 and L for every image token
    # on the first axis, rows and columns on the others
    p = model.config.patch_size
    captions, rows, columns = model.config.axes_lens
    h, w = _size(run)
    return [("caption tokens + 1", _text(run) + 1, captions), ("patch rows", h // p, rows), ("patch columns", w // p, columns)]


def _hidream(model: Any, run: xcfg.ExampleRun) -> Limits:
    # a non-square latent is padded to max_seq = max_resolution's patches
    p = model.config.patch_size
    h, w = _size(run)
    return [("image patches", (h // p) * (w // p), model.max_seq)]


def _stable_audio(model: Any, run: xcfg.ExampleRun) -> Limits:
    # the pipeline refuses audio longer than the transformer's sample_size latents
    vae = run.pipe.vae
    seconds = run.kwargs["audio_end_in_s"] - run.kwargs.get("audio_start_in_s", 0.0)
    return [("latent frames", math.ceil(seconds * vae.sampling_rate / vae.hop_length), model.config.sample_size)]


CHECKS: dict[str, Callable[[Any, xcfg.ExampleRun], Limits]] = {
    "AuraFlowTransformer2DModel": _auraflow,
    "SD3Transformer2DModel": _sd3,
    "CogVideoXTransformer3DModel": _cogvideox,
    "WanTransformer3DModel": _wan,
    "WanVACETransformer3DModel": _wan,
    "WanAnimateTransformer3DModel": _wan,
    "SkyReelsV2Transformer3DModel": _wan,
    "QwenImageTransformer2DModel": _qwenimage,
    "CosmosTransformer3DModel": _cosmos,
    "Kandinsky5Transformer3DModel": _kandinsky5,
    "Lumina2Transformer2DModel": _lumina2,
    "HiDreamImageTransformer2DModel": _hidream,
    "StableAudioDiTModel": _stable_audio,
}
# Denoisers whose positions are computed for the call's size, so no table bounds it
NO_TABLE = {
    "UNet2DConditionModel": "convolutions, no positional table",
    "ControlNetModel": "convolutions, no positional table",
    "MochiTransformer3DModel": "rotary frequencies applied to the call's positions",
    "LTX2VideoTransformer3DModel": "rotary positions normalized to base sizes, no table",
    "Flux2Transformer2DModel": "rotary embedding computed from the ids of the call",
    "ChromaTransformer2DModel": "rotary embedding computed from the ids of the call",
    "HunyuanVideo15Transformer3DModel": "rotary embedding computed for the call's grid",
    "CogView4Transformer2DModel": "rotary table indices scaled into rope_axes_dim for any size",
}


@pytest.mark.parametrize("name", FULL)
def test_full_call_fits_the_position_tables(name):
    run, denoisers = _built(name)
    for key, model in denoisers.items():
        cls = type(model).__name__
        assert cls in CHECKS or cls in NO_TABLE, (
            f"{name}.{key}: {cls} has no position-table check; add one to CHECKS (or say in NO_TABLE why none is needed)"
        )
        for what, needed, available in CHECKS.get(cls, lambda *_: [])(model, run):
            assert needed <= available, f"{name}.{key} ({cls}): {what} {needed} exceed the table's {available}"
