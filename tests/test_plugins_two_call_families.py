"""What the two-call family plugins of issue 10 refuse, and what their examples alone would not show.

Every registered example is checked on 2 gloo ranks by the generic example test; the checks here are the
refusals (no ranks needed: ``parallelize`` refuses before any collective) and the hazards a plain example run
would not exercise.
"""

from __future__ import annotations

import pytest

import xcfg


def test_flux2_klein_step_distilled_pipeline_is_refused_with_the_reason():
    from xcfg_plugins import flux2

    run = flux2.build(distilled=True)
    with pytest.raises(xcfg.UnsupportedPipelineError, match="is_distilled=True") as err:
        xcfg.parallelize(run.pipe)
    assert "Klein base checkpoint" in str(err.value)


@pytest.mark.parametrize("true_cfg", [False, True])
def test_flux2_dev_guidance_distilled_is_refused_even_with_true_cfg(true_cfg):
    from diffusers import Flux2Transformer2DModel

    from xcfg_plugins import flux2

    run = flux2.build()
    run.pipe.transformer = Flux2Transformer2DModel(**flux2.CONFIGS["tiny"]["transformer"], guidance_embeds=True)
    with pytest.raises(xcfg.RefusedError, match="guidance-distilled") as err:
        xcfg.parallelize(run.pipe, true_cfg=true_cfg)
    assert "ContextParallelConfig" in str(err.value)


def _qwenimage21_cache_reads_rank(rank: int, world: int) -> dict:
    """The KV-cache reads of each branch (told apart by the prefix length: 8 prompt tokens, 5 negative) and the
    calls computed, plainly then parallelized, with the output error."""
    import torch
    from diffusers.models.transformers import transformer_qwenimage21 as module

    from xcfg.testing import BatchCounter, relative_error

    reads = {"cond": 0, "uncond": 0}
    original = module.QwenImage21KVLayerCache.get

    def get(self):  # counts, then reads as before
        k, v = original(self)
        reads["cond" if k.shape[1] == 8 else "uncond"] += 1
        return k, v

    module.QwenImage21KVLayerCache.get = get
    try:
        run = xcfg.build_example("qwenimage21", size="tiny")

        def call() -> tuple:
            reads.update(cond=0, uncond=0)
            with BatchCounter(run.pipe.transformer) as counter:
                out = run.pipe(**run.kwargs, output_type="pt", generator=torch.Generator().manual_seed(7)).images
            return out, dict(reads), len(counter.batches)

        expected, single_reads, single_calls = call()
        with xcfg.parallelize(run.pipe) as handle:
            actual, parallel_reads, parallel_calls = call()
            predictions = handle.wrapped[0].predictions
    finally:
        module.QwenImage21KVLayerCache.get = original
    return {
        "error": relative_error(actual, expected), "single_reads": single_reads, "parallel_reads": parallel_reads,
        "single_calls": single_calls, "parallel_calls": parallel_calls, "predictions": predictions,
    }


@pytest.mark.ranks
@pytest.mark.timeout(300)
def test_qwenimage21_predicted_uncond_calls_read_the_uncond_branch_cache():
    # 4 steps, 2 blocks: step 0 fills both caches on both ranks ("extract", no reads); steps 1-3 read them. In
    # parallel, rank 0 computes the cond calls and rank 1 the predicted uncond calls: each reads only its branch's
    # cache, and the result equals one process.
    from xcfg.testing import run_ranks

    results = run_ranks(_qwenimage21_cache_reads_rank, timeout=240)
    for rank, r in enumerate(results):
        assert r["error"] < 1e-4, r
        assert r["single_reads"] == {"cond": 6, "uncond": 6}, r
        assert r["single_calls"] == 8 and r["parallel_calls"] == 5 and r["predictions"] == 3, r
    assert results[0]["parallel_reads"] == {"cond": 6, "uncond": 0}, results[0]
    assert results[1]["parallel_reads"] == {"cond": 0, "uncond": 6}, results[1]


def test_cosmos_video2world_is_refused_with_the_reason():
    from diffusers import Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    from xcfg_plugins import cosmos

    run = cosmos.build()
    pipe = Cosmos2VideoToWorldPipeline(
        text_encoder=None, tokenizer=None, transformer=run.pipe.transformer, vae=run.pipe.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(), safety_checker=run.pipe.safety_checker,
    )
    with pytest.raises(xcfg.UnsupportedPipelineError, match="uncond call other inputs") as err:
        xcfg.parallelize(pipe)
    assert "Cosmos2_5_PredictBasePipeline" in str(err.value)
    xcfg.parallelize(run.pipe).remove()  # Predict 2.5 is accepted (one process: nothing installed)


def test_ideogram4_two_denoisers_are_refused_with_the_reason():
    import pathlib
    import sys

    tests = str(pathlib.Path(__file__).resolve().parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from census.cases_two_call import ideogram4

    pipe, _ = ideogram4()
    with pytest.raises(xcfg.UnsupportedPipelineError, match="two different models") as err:
        xcfg.parallelize(pipe)
    assert "one model per GPU" in str(err.value)


def _hunyuan_video15_guider_stop_rank(rank: int, world: int) -> dict:
    import torch
    from diffusers.guiders import ClassifierFreeGuidance

    from xcfg.testing import BatchCounter, relative_error

    run = xcfg.build_example("hunyuan-video15", size="tiny")
    run.pipe.guider = ClassifierFreeGuidance(guidance_scale=6.0, stop=0.5)  # CFG in the first half of the steps only

    def call() -> tuple:
        with BatchCounter(run.pipe.transformer) as counter:
            out = run.pipe(**run.kwargs, output_type="pt", generator=torch.Generator().manual_seed(7)).frames
        return out, len(counter.batches)

    expected, single = call()
    with xcfg.parallelize(run.pipe) as handle:
        actual, calls = call()
    return {"error": relative_error(actual, expected), "single": single, "calls": calls}


@pytest.mark.ranks
@pytest.mark.timeout(300)
def test_hunyuan_video15_guider_stop_gives_single_call_steps_that_run_whole():
    # 4 steps, the guider stops after step 2: 2 + 2 + 1 + 1 calls in one process; per rank both calls of step 1,
    # one call in step 2 (its uncond call predicted), then one call per single-call step: equal output.
    from xcfg.testing import run_ranks

    for r in run_ranks(_hunyuan_video15_guider_stop_rank, timeout=240):
        assert r["error"] < 1e-4, r
        assert r["single"] == 6 and r["calls"] == 5, r
