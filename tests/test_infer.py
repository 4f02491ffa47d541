"""The inferred mode on real gloo ranks: models no plugin names are split after a verified first call.

Every check compares the parallel result with one process (fp32, relative error under 1e-4) and counts
what each rank computed below the wrapper (the batch and the calls reaching the model's first layer).
"""

from __future__ import annotations


import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

import xcfg
from xcfg.testing import capture_notices, relative_error, run_ranks

pytestmark = pytest.mark.ranks
STEPS = 4


class Counted(torch.nn.Module):
    """A linear layer that records the leading size of every input: what this rank computed."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return self.linear(x)


class OwnUNet(ModelMixin, ConfigMixin):
    """A model from outside diffusers with every input kind a UNet has: a dict of batched conditioning
    (``added_cond_kwargs``), a tuple of residuals (ControlNet), a 0-dim timestep, a shared tensor."""

    @register_to_config
    def __init__(self, width: int = 4, mix_batch: bool = False) -> None:
        super().__init__()
        self.inner = Counted(width)
        self.mix_batch = mix_batch

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, residuals=None,
                rotary=None, return_dict=True):
        out = self.inner(sample) + encoder_hidden_states.mean(dim=1, keepdim=True) + timestep
        if added_cond_kwargs is not None:
            out = out + added_cond_kwargs["time_ids"][:, None, :] * added_cond_kwargs["scale"]
        for residual in residuals or ():
            out = out + residual
        if rotary is not None:
            out = out + rotary  # shared by every sample: (tokens, width)
        if self.mix_batch:  # a batch-mixing model (as PAG is): no split can be right
            out = out - out.mean(dim=0, keepdim=True)
        return (out,) if not return_dict else {"sample": out}


def batched_loop(model, latents, cond, uncond, steps=STEPS, guidance=3.0, generator=None):
    """A batched CFG loop as diffusers pipelines write it: one call per step on [uncond, cond]."""
    g = torch.Generator().manual_seed(3)
    time_ids = torch.randn(2, latents.shape[-1], generator=g)
    rotary = torch.randn(latents.shape[1], latents.shape[-1], generator=g)
    for i in range(steps):
        x = torch.cat([latents] * 2)
        residuals = (torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g))
        pred = model(x, torch.tensor(float(steps - i)), torch.cat([uncond, cond]),
                     added_cond_kwargs={"time_ids": time_ids, "scale": 0.5}, residuals=residuals, rotary=rotary,
                     return_dict=False)[0]
        u, c = pred.chunk(2)
        latents = latents - 0.1 * (u + guidance * (c - u))
    return latents


def _inputs(batch: int = 1):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 4, generator=g), torch.randn(batch, 5, 4, generator=g), torch.randn(batch, 5, 4, generator=g)


def _batched_rank(rank: int, world: int, mix_batch: bool) -> dict:
    torch.manual_seed(0)
    model = OwnUNet(mix_batch=mix_batch).eval()
    latents, cond, uncond = _inputs()
    expected = batched_loop(model, latents, cond, uncond)
    model.inner.seen.clear()
    with capture_notices() as caught:
        handle = xcfg.parallelize(model)
        actual = batched_loop(model, latents, cond, uncond)
    return {
        "error": relative_error(actual, expected),
        "seen": list(model.inner.seen),
        "warnings": [w for w in caught if "xcfg" in w],
        "source": handle.plugin_source(),
        "inferred": {k: (v.path if v else None) for k, v in handle.inferred.items()},
    }


def test_a_model_from_outside_diffusers_is_split_by_inference_alone():
    for result in run_ranks(_batched_rank, False, timeout=120):
        assert result["error"] < 1e-4, result
        # call 1: the whole batch (the reference) and this rank's share (the verified split); then shares only
        assert result["seen"] == [2, 1] + [1] * (STEPS - 1), result
        assert not result["warnings"], result
        source = result["source"]
        for label in ('name="sample"', 'name="encoder_hidden_states"', 'name="added_cond_kwargs", key="time_ids"',
                      'name="residuals"'):
            assert label in source, source
        assert "timestep" not in source and "rotary" not in source, source  # 0-dim and shared: not batch inputs
        compile(source, "plugin.py", "exec")


def test_a_batch_mixing_model_fails_verification_and_runs_whole_with_one_warning():
    for result in run_ranks(_batched_rank, True, timeout=120):
        assert result["error"] < 1e-4, result
        assert result["seen"] == [2, 1] + [2] * (STEPS - 1), result  # verified once, then whole
        notices = [w for w in result["warnings"] if "could not be verified" in w]
        assert len(notices) == 1 and "OwnUNet" in notices[0] and "batch_inputs" in notices[0], result
        assert result["inferred"] == {"model": None} and result["source"] == "", result


class ModalTwoCall(ModelMixin, ConfigMixin):
    """A two-call model with state no argument shows, as GLM-Image's KV cache: the pipeline flips
    ``mode`` between the cond and the uncond call."""

    @register_to_config
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.inner = Counted(width)
        self.mode = "read"

    def forward(self, hidden_states, encoder_hidden_states, timestep, return_dict=True):
        out = self.inner(hidden_states) + encoder_hidden_states.mean(dim=1, keepdim=True) + timestep.view(-1, 1, 1)
        if self.mode == "skip":
            out = out * 0.5
        return (out,) if not return_dict else {"sample": out}


def two_call_loop(model, latents, cond, uncond, *, flip_mode: bool, steps=STEPS, guidance=3.0):
    for i in range(steps):
        t = torch.full((latents.shape[0],), float(steps - i))
        model.mode = "read"
        with model.cache_context("cond") if hasattr(model, "cache_context") else _nothing():
            c = model(latents, cond, t / 10, return_dict=False)[0]
        if flip_mode:
            model.mode = "skip"
        u = model(latents, uncond, t / 10, return_dict=False)[0]
        latents = latents - 0.1 * (u + guidance * (c - u))
    return latents


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _two_call_rank(rank: int, world: int, flip_mode: bool) -> dict:
    torch.manual_seed(0)
    model = ModalTwoCall().eval()
    latents, cond, uncond = _inputs()
    expected = two_call_loop(model, latents, cond, uncond, flip_mode=flip_mode)
    model.inner.seen.clear()
    with capture_notices() as caught:
        handle = xcfg.parallelize(model)
        actual = two_call_loop(model, latents, cond, uncond, flip_mode=flip_mode)
    return {
        "error": relative_error(actual, expected),
        "calls": len(model.inner.seen),
        "predictions": handle.wrapped[0].predictions,
        "warnings": [w for w in caught if "xcfg" in w],
        "inferred": {k: (v.style.value if v else None) for k, v in handle.inferred.items()},
    }


def test_a_two_call_model_is_inferred_and_its_first_prediction_verified():
    for result in run_ranks(_two_call_rank, False, timeout=120):
        assert result["error"] < 1e-4, result
        # step 1 whole (2 calls); step 2 predicted (1) + its uncond call computed for real once (1); then 1 per step
        assert result["calls"] == 2 + 2 + (STEPS - 2), result
        assert result["predictions"] == STEPS - 1, result
        assert result["inferred"] == {"model": "two_call"} and not result["warnings"], result


def test_state_no_argument_shows_fails_the_verification_glm_image_hazard():
    for result in run_ranks(_two_call_rank, True, timeout=120):
        assert result["error"] < 1e-4, result  # the wrong prediction never reaches the result
        assert result["predictions"] == 1, result  # verified once, wrong, never predicted again
        assert result["calls"] == 2 * STEPS, result  # step 2: the prediction, then the real uncond call
        notices = [w for w in result["warnings"] if "differed from the real one" in w]
        assert len(notices) == 1 and "ModalTwoCall" in notices[0], result
        assert result["inferred"] == {"model": None}, result


class PerSample(ModelMixin, ConfigMixin):
    """Z-Image's interface: the batch is a Python list of per-sample tensors, and so is the output."""

    @register_to_config
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.inner = Counted(width)

    def forward(self, x, t, cap_feats, return_dict=True):
        outs = [self.inner(xi[None])[0] + ci.mean(0) + ti for xi, ci, ti in zip(x, cap_feats, t)]
        return (outs,) if not return_dict else {"sample": outs}


def list_loop(model, latents, cond, uncond, steps=STEPS, guidance=3.0):
    for i in range(steps):
        x = list(torch.cat([latents] * 2).unbind(0))
        caps = [uncond[0], cond[0]] * latents.shape[0] if latents.shape[0] == 1 else list(torch.cat([uncond, cond]))
        outs = model(x, torch.full((len(x),), float(steps - i)), caps, return_dict=False)[0]
        pred = torch.stack(outs)
        u, c = pred.chunk(2)
        latents = latents - 0.1 * (u + guidance * (c - u))
    return latents


def _list_rank(rank: int, world: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = PerSample().eval()
    latents, cond, uncond = _inputs(batch)
    expected = list_loop(model, latents, cond, uncond)
    model.inner.seen.clear()
    with capture_notices() as caught:
        handle = xcfg.parallelize(model)
        actual = list_loop(model, latents, cond, uncond)
    return {
        "error": relative_error(actual, expected),
        "calls": len(model.inner.seen),
        "warnings": [w for w in caught if "xcfg" in w],
        "source": handle.plugin_source(),
    }


def test_a_list_of_per_sample_tensors_is_split_as_a_batch_z_image():
    for result in run_ranks(_list_rank, 1, timeout=120):
        assert result["error"] < 1e-4, result
        # per step, each sample of this rank's share reaches the layer once; step 1 also computes the whole list
        assert result["calls"] == (2 + 1) + (STEPS - 1) * 1, result
        assert "per_sample=True" in result["source"] and 'name="x"' in result["source"], result


def _single_pass(model, latents, cond):
    return model(latents, torch.tensor(1.0), cond, return_dict=False)[0]


class OnePassPipe:
    """A pipeline whose call reaches the model once, with a batch of 3 (CFG off, 3 images)."""

    def __init__(self, model):
        self.transformer = model

    def __call__(self, latents, cond):
        return _single_pass(self.transformer, latents, cond)


def _odd_rank(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    pipe = OnePassPipe(OwnUNet().eval())
    latents, cond, _ = _inputs(3)
    expected = pipe(latents, cond)
    pipe.transformer.inner.seen.clear()
    with capture_notices() as caught:
        xcfg.parallelize(pipe)
        actual = pipe(latents, cond)
        again = pipe(latents, cond)
    return {
        "error": max(relative_error(actual, expected), relative_error(again, expected)),
        "seen": pipe.transformer.inner.seen,
        "warnings": [w for w in caught if "xcfg" in w],
    }


def test_a_batch_that_does_not_divide_runs_whole_and_says_so_once():
    for result in run_ranks(_odd_rank, timeout=120):
        assert result["error"] < 1e-6, result
        assert result["seen"] == [3, 3], result
        notices = [w for w in result["warnings"] if "split none" in w]
        assert len(notices) == 1 and "OnePassPipe" in notices[0], result
