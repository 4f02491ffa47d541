"""Two-call plugins (Wan, Qwen-Image, Flux true CFG, HunyuanVideo) on 2 real gloo ranks.

Each check runs a tiny pipeline first plainly (the 1-process reference), then parallelized, on each rank,
and compares: the outputs agree, and the transformer calls each rank really computed (counted below the
wrapper, at the model's children) are N + 1 for N steps with CFG on (both calls in step 1, then one per
step) against 2N for one process, and N when CFG is off (every rank computes every call).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import xcfg
from xcfg.testing import BatchCounter, relative_error, run_ranks

pytestmark = pytest.mark.ranks

STEPS = 4
TIMEOUT = 240


def _two_call_rank(
    rank: int, world: int, name: str, scenarios: dict[str, dict[str, Any]], true_cfg: bool = False,
    prepare: Callable[[Any], None] | None = None,
) -> dict:
    """Per scenario: the error against the plain pipeline, the calls each denoiser computed plainly and
    parallelized, and the predictions the wrapper made. With ``true_cfg``, first checks the refusal.
    ``prepare(pipe)`` changes the built pipeline before anything runs."""
    run = xcfg.build_example(name, size="tiny")
    pipe = run.pipe
    if prepare is not None:
        prepare(pipe)
    denoisers = [getattr(pipe, a) for a in ("transformer", "transformer_2") if getattr(pipe, a, None) is not None]

    def call(overrides: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
        kwargs = {**run.kwargs, **overrides, "num_inference_steps": STEPS, "output_type": "pt"}
        with contextlib.ExitStack() as stack:
            counters = [stack.enter_context(BatchCounter(m)) for m in denoisers]
            output = getattr(pipe(**kwargs, generator=torch.Generator().manual_seed(7)), run.output)
        return output, [len(c.batches) for c in counters]

    result: dict[str, Any] = {}
    expected = {label: call(overrides) for label, overrides in scenarios.items()}
    if true_cfg:
        try:
            xcfg.parallelize(pipe).remove()
        except xcfg.NoCFGError as err:
            result["refused"] = str(err)
    handle = xcfg.parallelize(pipe, true_cfg=true_cfg)
    hooks = [w._hook for w in handle.wrapped]
    for label, overrides in scenarios.items():
        before = [h.predictions for h in hooks]
        actual, calls = call(overrides)
        result[label] = {
            "error": relative_error(actual, expected[label][0]),
            "single": expected[label][1],
            "parallel": calls,
            "predictions": [h.predictions - b for h, b in zip(hooks, before)],
        }
    handle.remove()
    return result


def _check(results: list[dict], label: str, single: list[int], parallel: list[int], predictions: list[int]) -> None:
    for rank, result in enumerate(results):
        got = result[label]
        assert got["error"] < 1e-4, (rank, label, got)
        assert got["single"] == single, (rank, label, got)
        assert got["parallel"] == parallel, (rank, label, got)
        assert got["predictions"] == predictions, (rank, label, got)


# N steps, CFG on: 2N calls in one process; per rank both calls of step 1, then one per step, every
# prediction hit (N - 1 of them). CFG off: one call per step, computed by every rank, no prediction.
CFG_ON = dict(single=[2 * STEPS], parallel=[STEPS + 1], predictions=[STEPS - 1])
CFG_OFF = dict(single=[STEPS], parallel=[STEPS], predictions=[0])


def _cfg_cutoff(pipe: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """A step-end callback that turns CFG off after the second step (the pipeline reads ``_guidance_scale``)."""
    if step == 1:
        pipe._guidance_scale = 1.0
    return {}


@pytest.mark.parametrize("name", ["wan", "wan-i2v", "wan-ti2v"])
def test_wan_runs_cond_and_uncond_on_two_ranks(name):
    scenarios = {"cfg": {}, "cfg_off": {"guidance_scale": 1.0}}
    if name == "wan":
        scenarios["cutoff"] = {"callback_on_step_end": _cfg_cutoff}
    results = run_ranks(_two_call_rank, name, scenarios, timeout=TIMEOUT)
    _check(results, "cfg", **CFG_ON)
    _check(results, "cfg_off", **CFG_OFF)
    if name == "wan":
        # two steps with CFG (2 + 1 calls per rank), then two steps of one call: rank 0 computes it, rank 1 computes
        # the uncond call it predicted, which no call asks for; each rank still makes one call per step and nothing
        # waits for the missing second call
        _check(results, "cutoff", single=[2 + 2 + 1 + 1], parallel=[2 + 1 + 1 + 1], predictions=[3])


def test_wan22_runs_both_experts_on_two_ranks():
    # 4 steps at t = 999, 900 (transformer, t >= 875) then 750, 500 (transformer_2). The experts share their
    # history, so transformer_2 predicts its first uncond call from transformer's last step: N + 1 calls per rank.
    scenarios = {"cfg": {}, "cfg_off": {"guidance_scale": 1.0}}
    results = run_ranks(_two_call_rank, "wan2.2", scenarios, timeout=TIMEOUT)
    _check(results, "cfg", single=[4, 4], parallel=[3, 2], predictions=[1, 2])
    _check(results, "cfg_off", single=[2, 2], parallel=[2, 2], predictions=[0, 0])


def test_qwenimage_true_cfg_on_two_ranks():
    scenarios = {
        "cfg": {},
        "no_negative": {"negative_prompt_embeds": None, "negative_prompt_embeds_mask": None},
        "scale_one": {"true_cfg_scale": 1.0},
        "cfg_again": {},
    }
    results = run_ranks(_two_call_rank, "qwenimage", scenarios, timeout=TIMEOUT)
    for label in ("cfg", "cfg_again"):
        _check(results, label, **CFG_ON)
    for label in ("no_negative", "scale_one"):
        _check(results, label, **CFG_OFF)


def test_flux_true_cfg_on_two_ranks():
    scenarios = {
        "cfg": {},
        "no_negative": {"negative_prompt_embeds": None, "negative_pooled_prompt_embeds": None},
        "scale_one": {"true_cfg_scale": 1.0},
    }
    results = run_ranks(_two_call_rank, "flux", scenarios, timeout=TIMEOUT)
    _check(results, "cfg", **CFG_ON)
    _check(results, "no_negative", **CFG_OFF)
    _check(results, "scale_one", **CFG_OFF)


def test_flux_ip_adapter_embeds_rewritten_between_calls_are_predicted():
    # FluxPipeline sets joint_attention_kwargs["ip_adapter_image_embeds"] in place before each call (image, then
    # negative image embeds): the wrapper's copies of the dict see the change, so every prediction still hits.
    results = run_ranks(_two_call_rank, "flux-ip-adapter", {"cfg": {}}, timeout=TIMEOUT)
    _check(results, "cfg", **CFG_ON)


@pytest.mark.parametrize("name", ["flux-dev", "hunyuan-video"])
def test_guidance_distilled_needs_true_cfg_then_runs_on_two_ranks(name):
    scenarios = {
        "cfg": {},
        "no_negative": {"negative_prompt_embeds": None, "negative_pooled_prompt_embeds": None},
        "scale_one": {"true_cfg_scale": 1.0},
    }
    results = run_ranks(_two_call_rank, name, scenarios, True, timeout=TIMEOUT)
    for result in results:
        assert "guidance-distilled" in result.get("refused", ""), result
        assert "true_cfg=True" in result["refused"], result
    _check(results, "cfg", **CFG_ON)
    _check(results, "no_negative", **CFG_OFF)
    _check(results, "scale_one", **CFG_OFF)


def _first_block_cache(pipe: Any) -> None:
    from diffusers import FirstBlockCacheConfig

    # any threshold reuses the cached tail of a context's previous call; this one always does after the first step
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))


@pytest.mark.filterwarnings("ignore:xcfg. a diffusers cache")
def test_wan_with_a_diffusers_cache_runs_whole_and_equals_one_process():
    # a cache keeps state per cache_context and decides from what it saw; a rank that computed only the other
    # branch would decide differently, so every call runs whole on every rank (and stays equal)
    results = run_ranks(_two_call_rank, "wan", {"cfg": {}}, False, _first_block_cache, timeout=TIMEOUT)
    _check(results, "cfg", single=[2 * STEPS], parallel=[2 * STEPS], predictions=[0])


MODULES = {
    "wan": ["wan", "wan2.2", "wan-i2v", "wan-ti2v", "wan-vace", "wan-animate"],
    "qwenimage": ["qwenimage", "qwenimage21"],
    "flux": ["flux", "flux-dev", "flux-ip-adapter"],
    "hunyuan_video": ["hunyuan-video"],
}


@pytest.mark.parametrize("module_name", MODULES)
def test_plugin_module_parts_and_specs(module_name, registry):
    module = importlib.import_module(f"xcfg_plugins.{module_name}")
    assert module.__doc__ and "cache_context(\"cond\")" in module.__doc__ and "differ" in module.__doc__
    assert "tiny" in module.CONFIGS and callable(module.build)
    assert [example.name for example in module.EXAMPLES] == MODULES[module_name]
    assert not any(example.default for example in module.EXAMPLES)
    assert module_name in registry.plugin_names()
    for spec in module.SPECS:
        cls = spec.resolve()
        assert spec.style is xcfg.CFGStyle.TWO_CALL and not spec.batch_inputs
        assert registry.lookup(cls).plugin == module_name
    for name in MODULES[module_name]:
        pipe = registry.example(name).build(size="tiny").pipe
        for attribute in ("transformer", "transformer_2"):
            denoiser = getattr(pipe, attribute, None)
            if denoiser is not None:
                assert registry.lookup(type(denoiser)).plugin == module_name


def test_wan_examples_pass_what_they_are_named_for(registry):
    seen = {}
    for name in ("wan-i2v", "wan-ti2v"):
        run = registry.example(name).build(size="tiny")

        def record(_module, args, kwargs, name=name):
            seen.setdefault(name, kwargs)

        handle = run.pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
        run.pipe(**{**run.kwargs, "num_inference_steps": 1, "output_type": "latent"})
        handle.remove()
    assert seen["wan-i2v"]["encoder_hidden_states_image"].shape[0] == 1  # CLIP image embeds, same in both calls
    timestep = seen["wan-ti2v"]["timestep"]
    assert timestep.dim() == 2 and timestep.shape[0] == 1, "TI2V: per-token timesteps (B, seq)"
    assert (timestep == 0).any() and (timestep > 0).any(), "the conditioning frame's tokens are at t = 0"


def test_flux_distillation_is_read_from_the_instance(registry):
    flux = registry.example("flux").build(size="tiny").pipe.transformer
    dev = registry.example("flux-dev").build(size="tiny").pipe.transformer
    spec = registry.lookup(type(flux)).spec
    assert spec.guidance_distilled(dev) and not spec.guidance_distilled(flux)
    assert "guidance-distilled" in spec.no_cfg_reason
