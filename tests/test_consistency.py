"""Every rank computes the same result as one process, or every rank raises; nothing hangs.

Real gloo processes; faults are injected on one rank, which then stays alive (as a notebook or a
server that catches errors would).
"""

from __future__ import annotations

import datetime
import time

import pytest
import torch

import xcfg
from xcfg.testing import BatchCounter, check_example, relative_error, run_ranks

pytestmark = pytest.mark.ranks


def _pipeline(name: str = "cogvideox", steps: int = 3):
    run = xcfg.build_example(name, size="tiny")
    run.pipe.set_progress_bar_config(disable=True)
    kwargs = {**run.kwargs, "num_inference_steps": steps, "output_type": "pt"}
    return run.pipe, kwargs, run.output


def _result(pipe, kwargs, output, **extra):
    return getattr(pipe(**kwargs, **extra), output)


# -- same starting noise -------------------------------------------------------------------------------


def _rng_rank(rank: int, world: int) -> dict:
    pipe, kwargs, output = _pipeline()  # the CogVideoX DPM sampler also draws noise at every step
    expected = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    expected_global = _result(pipe, kwargs, output)
    xcfg.parallelize(pipe)
    seeded_by_rank = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(rank))
    torch.manual_seed(rank)  # no generator, and global RNG streams that differ per rank
    drifted_global = _result(pipe, kwargs, output)
    return {
        "rank_seed": relative_error(seeded_by_rank, expected),
        "global": relative_error(drifted_global, expected_global),
    }


def test_rank_dependent_seeds_and_drifted_global_rng_are_synchronized_from_rank_0():
    for result in run_ranks(_rng_rank, timeout=180):
        assert result["rank_seed"] < 1e-4, result
        assert result["global"] < 1e-4, result


# -- divergence check ----------------------------------------------------------------------------------


def _divergence_rank(rank: int, world: int) -> dict:
    pipe, kwargs, output = _pipeline(steps=4)
    outcomes = {}
    xcfg.parallelize(pipe, check_every=2)
    different = dict(kwargs, prompt_embeds=kwargs["prompt_embeds"] + rank)
    try:
        _result(pipe, different, output, generator=torch.Generator().manual_seed(0))
        outcomes["prompt"] = "no error"
    except xcfg.DivergenceError as err:
        outcomes["prompt"] = str(err)

    def drift(_pipe, step, _t, tensors):
        return {"latents": tensors["latents"] + 0.01} if step == 1 and rank == 1 else {}

    try:
        _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0), callback_on_step_end=drift,
                callback_on_step_end_tensor_inputs=["latents"])
        outcomes["drift"] = "no error"
    except xcfg.DivergenceError as err:
        outcomes["drift"] = str(err)
    outcomes["after"] = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0)).shape
    return outcomes


def test_divergent_inputs_raise_on_every_rank_naming_the_call():
    for result in run_ranks(_divergence_rank, timeout=180):
        assert "call 0" in result["prompt"] and "encoder_hidden_states" in result["prompt"], result["prompt"]
        assert "call 2" in result["drift"] and "hidden_states" in result["drift"], result["drift"]
        assert len(result["after"]) == 5, "the group still works after a divergence"


# -- failure propagation -------------------------------------------------------------------------------


class _Fault:
    """Raises inside the transformer on one rank at one call."""

    def __init__(self, rank: int, call: int) -> None:
        self.rank, self.call, self.seen = rank, call, 0

    def __call__(self, *_):
        self.seen += 1
        if torch.distributed.get_rank() == self.rank and self.seen == self.call:
            raise RuntimeError("CUDA out of memory (injected)")


def _fault_rank(rank: int, world: int) -> dict:
    pipe, kwargs, output = _pipeline(steps=4)
    expected = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0))
    xcfg.parallelize(pipe)
    outcomes = {}

    # call 1 is the first of its shape (the ranks confirm every forward before gathering); call 3 is a
    # later one (the failing rank joins the gather with zeros and reports the failure right after)
    for label, call in (("first", 1), ("inside", 3)):
        hook = pipe.transformer.patch_embed.register_forward_pre_hook(_Fault(rank=1, call=call))
        start = time.monotonic()
        try:
            _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0))
            outcomes[label] = "no error"
        except Exception as err:
            outcomes[label] = f"{type(err).__name__}: {err}"
        outcomes[f"{label}_seconds"] = time.monotonic() - start
        hook.remove()

    def fail_outside(_pipe, step, _t, tensors):
        if step == 1 and rank == 1:
            raise ValueError("bad callback on rank 1")
        return {}

    start = time.monotonic()
    try:
        _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0), callback_on_step_end=fail_outside)
        outcomes["outside"] = "no error"
    except Exception as err:
        outcomes["outside"] = f"{type(err).__name__}: {err}"
    outcomes["outside_seconds"] = time.monotonic() - start

    # both ranks stayed alive and in step: the next call works and is still right
    outcomes["after"] = relative_error(_result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0)), expected)
    return outcomes


def test_a_rank_that_fails_and_stays_alive_makes_every_rank_raise():
    rank0, rank1 = run_ranks(_fault_rank, timeout=180)
    for label in ("first", "inside"):
        assert rank0[label].startswith("RankFailedError") and "rank 1" in rank0[label], rank0
        assert "out of memory (injected)" in rank0[label], "the peers are told the failing rank's error"
        assert rank1[label].startswith("RuntimeError") and "injected" in rank1[label], rank1
    assert rank0["outside"].startswith("RankFailedError") and "bad callback on rank 1" in rank0["outside"], rank0
    assert rank1["outside"].startswith("ValueError"), rank1
    for result in (rank0, rank1):
        assert max(result[f"{k}_seconds"] for k in ("first", "inside", "outside")) < 30, "promptly, not at a timeout"
        assert result["after"] < 1e-4


def _timeout_rank(rank: int, world: int) -> dict:
    pipe, kwargs, output = _pipeline(steps=3)
    xcfg.parallelize(pipe, timeout=datetime.timedelta(seconds=3))

    def stall(_pipe, step, _t, tensors):
        if step == 0 and rank == 1:
            time.sleep(8)  # a peer stuck outside xcfg, longer than the timeout
        return {}

    start = time.monotonic()
    try:
        _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0), callback_on_step_end=stall)
        outcome = "no error"
    except xcfg.RankError as err:
        outcome = type(err).__name__
    return {"outcome": outcome, "seconds": time.monotonic() - start}


def test_the_timeout_bounds_every_wait():
    rank0, rank1 = run_ranks(_timeout_rank, timeout=120)
    assert rank0["outcome"] == "RankTimeoutError" and rank0["seconds"] < 30, rank0
    assert rank1["outcome"] in {"RankTimeoutError", "RankFailedError"} and rank1["seconds"] < 40, rank1


# -- batch shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, overrides, share",
    [
        ("cogvideox", {"guidance_scale": 1.0}, 1),  # CFG off: batch 1 runs whole on every rank
        # batch 4: two per rank. (CogVideoX forces one video per prompt, and SD3/Mochi do not repeat
        # precomputed embeddings; PixArt-alpha repeats them, as it would encoded prompts.)
        ("pixart-alpha", {"num_images_per_prompt": 2}, 2),
        ("sd3", {"skip_guidance_layers": [0], "skip_layer_guidance_start": 0.0}, None),  # extra calls at batch 1
    ],
    ids=["cfg-off", "images-per-prompt", "sd3-skip-layer-guidance"],
)
def test_batch_shapes_equal_one_process_and_split_when_they_divide(name, overrides, share):
    report = check_example(name, timeout=240, **overrides)
    assert report.ok, report
    if share is not None:
        assert all(b == [share] * len(report.single_batches) for b in report.parallel_batches), report


def _prompts_and_cutoff_rank(rank: int, world: int) -> dict:
    from diffusers.callbacks import SD3CFGCutoffCallback

    results = {}
    pipe, kwargs, output = _pipeline("cogvideox", steps=2)
    two = dict(kwargs, prompt_embeds=torch.cat([kwargs["prompt_embeds"], -kwargs["prompt_embeds"]]),
               negative_prompt_embeds=torch.cat([kwargs["negative_prompt_embeds"]] * 2))
    with BatchCounter(pipe.transformer) as single:
        expected = _result(pipe, two, output, generator=torch.Generator().manual_seed(0))
    handle = xcfg.parallelize(pipe)
    with BatchCounter(pipe.transformer) as parallel:
        actual = _result(pipe, two, output, generator=torch.Generator().manual_seed(0))
    handle.remove()
    results["prompts"] = (relative_error(actual, expected), single.batches, parallel.batches)

    pipe, kwargs, output = _pipeline("sd3", steps=4)
    cutoff = SD3CFGCutoffCallback(cutoff_step_ratio=0.5)
    extra = {"callback_on_step_end": cutoff, "callback_on_step_end_tensor_inputs": cutoff.tensor_inputs}
    with BatchCounter(pipe.transformer) as single:
        expected = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0), **extra)
    xcfg.parallelize(pipe)
    with BatchCounter(pipe.transformer) as parallel:
        actual = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0), **extra)
    results["cutoff"] = (relative_error(actual, expected), single.batches, parallel.batches)
    return results


def test_several_prompts_and_a_callback_that_shrinks_the_batch():
    for result in run_ranks(_prompts_and_cutoff_rank, timeout=180):
        error, single, parallel = result["prompts"]
        assert error < 1e-4 and single == [4, 4] and parallel == [2, 2], result["prompts"]
        error, single, parallel = result["cutoff"]
        assert error < 1e-4 and single == [2, 2, 2, 1] and parallel == [1, 1, 1, 1], result["cutoff"]


def _interrupt_rank(rank: int, world: int) -> dict:
    pipe, kwargs, output = _pipeline(steps=5)

    def stop_everywhere(p, step, _t, tensors):
        if step == 1:
            p._interrupt = True
        return {}

    def stop_on_rank_0(p, step, _t, tensors):
        if step == 1 and rank == 0:
            p._interrupt = True
        return {}

    def run(callback):
        with BatchCounter(pipe.transformer) as counter:
            out = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0), callback_on_step_end=callback)
        return out, counter.batches

    expected, expected_calls = run(stop_everywhere)
    xcfg.parallelize(pipe)
    everywhere, everywhere_calls = run(stop_everywhere)
    start = time.monotonic()
    try:
        run(stop_on_rank_0)
        one_rank = "no error"
    except xcfg.RankError as err:
        one_rank = type(err).__name__
    return {
        "expected_calls": expected_calls,
        "everywhere": (relative_error(everywhere, expected), everywhere_calls),
        "one_rank": (one_rank, time.monotonic() - start),
        "after": _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0)).shape,
    }


def test_an_interrupt_on_every_rank_equals_one_process_and_on_one_rank_raises_everywhere():
    for result in run_ranks(_interrupt_rank, timeout=180):
        assert result["expected_calls"] == [2, 2]
        error, calls = result["everywhere"]
        assert error < 1e-4 and calls == [1, 1], result
        outcome, seconds = result["one_rank"]
        assert outcome == "RankMismatchError" and seconds < 30, result
        assert len(result["after"]) == 5, "the group still works afterwards"


# -- bad set-ups ---------------------------------------------------------------------------------------


def _twice_rank(rank: int, world: int) -> dict:
    from torch.distributed import distributed_c10d as c10d

    pipe, kwargs, output = _pipeline(steps=2)
    xcfg.parallelize(pipe)
    groups = len(c10d._world.pg_map)
    try:
        xcfg.parallelize(pipe)
        message = "accepted"
    except xcfg.SetupError as err:
        message = str(err)
    works = _result(pipe, kwargs, output, generator=torch.Generator().manual_seed(0)).shape
    return {"message": message, "new_groups": len(c10d._world.pg_map) - groups, "works": tuple(works)}


def test_parallelize_twice_is_refused_before_any_collective():
    for result in run_ranks(_twice_rank, timeout=120):
        assert "already parallelized" in result["message"]
        assert result["new_groups"] == 0 and len(result["works"]) == 5


def _device_rank(rank: int, world: int) -> dict:
    import xcfg._refusals as refusals

    pipe, _, _ = _pipeline(steps=2)
    outcomes = {}
    real = refusals.module_device
    try:
        # what each rank would see with its pipeline on a GPU: gloo cannot carry CUDA tensors
        refusals.module_device = lambda module: torch.device("cuda", rank)
        try:
            xcfg.parallelize(pipe)
        except xcfg.SetupError as err:
            outcomes["gloo_cuda"] = str(err)
    finally:
        refusals.module_device = real
    return outcomes


def test_a_backend_that_cannot_carry_the_tensors_is_refused():
    for result in run_ranks(_device_rank, timeout=120):
        assert "cannot carry cuda tensors" in result["gloo_cuda"] and "nccl" in result["gloo_cuda"]


def test_a_model_on_another_ranks_gpu_is_refused(monkeypatch):
    """One process is enough: the check is local (LOCAL_RANK against the model's device)."""
    import xcfg._refusals as refusals

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(refusals, "backend_for", lambda group, device: "nccl")
    monkeypatch.setattr(refusals, "module_device", lambda module: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(xcfg.SetupError, match=r"cuda:0.*local rank 1"):
        refusals.check_devices({"transformer": torch.nn.Linear(1, 1)}, None)
    monkeypatch.setattr(refusals, "module_device", lambda module: torch.device("cpu"))
    with pytest.raises(xcfg.SetupError, match="NCCL"):
        refusals.check_devices({"transformer": torch.nn.Linear(1, 1)}, None)
