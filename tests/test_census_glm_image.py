"""The GLM-Image hazard on the real pipeline (the census case ``GlmImagePipeline``), on 2 real gloo ranks.

GLM-Image switches its KV cache to mode "skip" between the cond and the uncond call of every step: state no
argument shows. The first test shows the census case really has the hazard: with a naive ``two_call`` spec the
predicted uncond calls (computed while the cache is in mode "read") are taken as the real ones and the result is
wrong, silently. The second shows what xcfg does with no plugin: the inferred two-call style verifies its first
predicted uncond call against the real one, finds they differ, and runs the pipeline whole: equal to one process.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest
import torch

import xcfg
from xcfg.testing import BatchCounter, capture_notices, relative_error, run_ranks

TIMEOUT = 240.0


class _NaiveGlmImagePlugin:
    """What a plugin author would first write for GLM-Image: a plain two-call spec (wrong for image prompts)."""

    @xcfg.hookimpl
    def register_models(self, register: Any) -> None:
        register(xcfg.ModelSpec(
            model="diffusers.models.transformers.transformer_glm_image:GlmImageTransformer2DModel", style="two_call",
        ))


def _glm_rank(rank: int, world: int, naive: bool) -> dict[str, Any]:
    tests = str(pathlib.Path(__file__).resolve().parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from census.cases_two_call import glm_image

    pipe, kwargs = glm_image()

    def call() -> tuple[torch.Tensor, int]:
        with BatchCounter(pipe.transformer) as counter:
            out = pipe(**kwargs, output_type="pt", generator=torch.Generator().manual_seed(7)).images
        return out, len(counter.batches)

    expected, single_calls = call()
    registry = None
    if naive:
        registry = xcfg.Registry(autoload=False)
        registry.register(_NaiveGlmImagePlugin(), name="naive-glm-image")
    with capture_notices() as caught:
        with xcfg.parallelize(pipe, registry=registry) as handle:
            actual, calls = call()
            predictions = sum(w.predictions for w in handle.wrapped)
            inferred = handle.specs.get("transformer") is None
    return {
        "error": relative_error(actual, expected), "single_calls": single_calls, "calls": calls,
        "predictions": predictions, "inferred": inferred,
        "warnings": [w for w in caught if w.startswith("xcfg")],
    }


@pytest.mark.ranks
@pytest.mark.timeout(300)
def test_glm_image_case_defeats_a_naive_two_call_spec():
    # 1 "write" call for the condition image, then 3 steps of a cond and an uncond call: 7 calls in one process. With
    # a naive spec each rank computes 1 + 2 + 1 + 1 = 5 and uses 2 predicted uncond calls, computed in mode "read".
    results = run_ranks(_glm_rank, True, timeout=TIMEOUT)
    for r in results:
        assert r["single_calls"] == 7 and r["calls"] == 5 and r["predictions"] == 2 and not r["inferred"], r
        assert r["error"] > 1e-3, f"the naive spec should be wrong here (the hazard is gone?): {r}"


@pytest.mark.ranks
@pytest.mark.timeout(300)
def test_glm_image_without_a_plugin_is_verified_and_runs_whole():
    results = run_ranks(_glm_rank, False, timeout=TIMEOUT)
    for r in results:
        assert r["inferred"], r
        assert r["error"] < 1e-4, r
        assert r["calls"] >= r["single_calls"], f"a rank skipped a call it could not verify: {r}"
        assert any("differed" in w for w in r["warnings"]), r["warnings"]
