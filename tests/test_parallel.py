"""CFG parallelism on real gloo ranks: equal to one process, and each rank computes only its share."""

from __future__ import annotations

import inspect
import textwrap

import pytest
import torch
from toys import TOY_SPEC, ToyDenoiser, ToyPlugin, UnknownDenoiser, toy_inputs, toy_model

import xcfg
from xcfg.testing import RanksFailed, check_example, relative_error, run_ranks

pytestmark = pytest.mark.ranks


@pytest.mark.parametrize("name", ["cogvideox", "sd3", "mochi"])
def test_builtin_pipeline_equals_one_process_and_halves_the_batch(name):
    report = check_example(name, timeout=240)
    assert all(e < 1e-4 for e in report.errors), report
    steps = len(report.single_batches)
    assert report.single_batches == [2] * steps, report
    assert report.parallel_batches == [[1] * steps, [1] * steps], report


def _toy_rank(rank: int, world: int) -> dict:
    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    reference = toy_model()
    model = toy_model()
    signature = inspect.signature(model.forward)
    handle = xcfg.parallelize(model, registry=registry)
    results = {"signature_kept": inspect.signature(model.forward) == signature, "errors": {}, "batches": {}}

    def check(label, batch, call):
        model.batches.clear()
        expected, actual = call(reference), call(model)
        if isinstance(expected, tuple):
            expected, actual = expected[0], actual[0]
        else:
            results[f"{label}_type"] = type(actual).__name__
            expected, actual = expected.sample, actual.sample
        results["errors"][label] = relative_error(actual, expected)
        results["batches"][label] = list(model.batches)

    x = toy_inputs(2)
    residuals = [torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    extra = {"extra": torch.tensor([1.0, -1.0]), "shared": "left alone"}
    check("keywords", 2, lambda m: m(**x, return_dict=False))
    check("positional", 2, lambda m: m(x["hidden_states"], x["encoder_hidden_states"], x["timestep"], None, None, 2.0, False))
    check("return_dict_default", 2, lambda m: m(**x))
    check("list_and_dict", 2, lambda m: m(**x, residuals=residuals, attention_kwargs=extra, return_dict=False))
    check("batch_4", 4, lambda m: m(**toy_inputs(4, seed=1), return_dict=False))
    check("odd_batch_3", 3, lambda m: m(**toy_inputs(3, seed=2), return_dict=False))
    check("broadcast_timestep", 2, lambda m: m(x["hidden_states"], x["encoder_hidden_states"], torch.ones(1), return_dict=False))
    try:
        model(x["hidden_states"], x["encoder_hidden_states"], torch.ones(3), return_dict=False)
    except xcfg.ShapeError as err:
        results["shape_error"] = str(err)
    results["extra_left_alone"] = "extra" in extra and extra["shared"] == "left alone"
    handle.remove()
    model.batches.clear()
    model(**x, return_dict=False)
    results["after_remove"] = list(model.batches)
    results["forward_restored"] = model.forward.__func__ is ToyDenoiser.forward
    return results


def test_split_gather_binds_every_argument_form():
    for rank, result in enumerate(run_ranks(_toy_rank, timeout=120)):
        assert result["signature_kept"], rank
        assert all(e < 1e-6 for e in result["errors"].values()), result["errors"]
        assert result["batches"] == {
            "keywords": [1], "positional": [1], "return_dict_default": [1], "list_and_dict": [1],
            "batch_4": [2], "odd_batch_3": [3], "broadcast_timestep": [1],
        }, result["batches"]
        assert result["return_dict_default_type"] == "Transformer2DModelOutput"
        assert "timestep" in result["shape_error"] and "batch" in result["shape_error"]
        assert result["extra_left_alone"]
        assert result["after_remove"] == [2] and result["forward_restored"]


def _refusal_rank(rank: int, world: int) -> dict:
    from diffusers import FluxTransformer2DModel
    from torch.distributed import distributed_c10d as c10d

    groups_before = len(c10d._world.pg_map)
    outcomes = {}

    class FluxPipe:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4), guidance_embeds=True,
        )

    class UnknownPipe:
        transformer = UnknownDenoiser()

    for label, pipe in (("flux", FluxPipe()), ("unknown", UnknownPipe())):
        try:
            xcfg.parallelize(pipe, infer=False)  # inference off: unknown models are refused
            outcomes[label] = "accepted"
        except xcfg.RefusedError as err:
            outcomes[label] = f"{type(err).__name__}: {err}"
    outcomes["new_groups"] = len(c10d._world.pg_map) - groups_before
    return outcomes


def test_flux_and_unknown_models_with_inference_off_are_refused_on_every_rank_before_any_collective():
    for result in run_ranks(_refusal_rank, timeout=120):
        assert result["flux"].startswith("NoCFGError") and "guidance-distilled" in result["flux"]
        assert result["unknown"].startswith("UnsupportedModelError") and "UnknownDenoiser" in result["unknown"]
        assert result["new_groups"] == 0, "a refusal must not create a process group"


def _world_of_three_rank(rank: int, world: int) -> str:
    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    try:
        xcfg.parallelize(toy_model(), registry=registry)
    except xcfg.SetupError as err:
        return str(err)
    return "accepted"


def test_world_size_the_degree_does_not_divide_is_refused():
    for message in run_ranks(_world_of_three_rank, world_size=3, timeout=120):
        assert "world size 3 is not a multiple of the CFG degree 2" in message


def _four_ranks_two_groups(rank: int, world: int) -> dict:
    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    reference, model = toy_model(), toy_model()
    handle = xcfg.parallelize(model, registry=registry)
    x = toy_inputs(2, seed=rank // 2)  # each CFG group runs its own prompt
    error = relative_error(model(**x, return_dict=False)[0], reference(**x, return_dict=False)[0])
    return {"ranks": handle.group.ranks, "batches": model.batches, "error": error}


def test_four_ranks_form_two_cfg_groups():
    results = run_ranks(_four_ranks_two_groups, world_size=4, timeout=180)
    assert [r["ranks"] for r in results] == [(0, 1), (0, 1), (2, 3), (2, 3)]
    for result in results:
        assert result["batches"] == [1] and result["error"] < 1e-6


def _entry_point_rank(rank: int, world: int, path: str) -> dict:
    import sys

    sys.path.insert(0, path)
    import acme_xcfg

    registry = xcfg.Registry()  # autoloads entry points, the third-party one included
    reference, model = acme_xcfg.AcmeDenoiser(), acme_xcfg.AcmeDenoiser()
    handle = xcfg.parallelize(model, registry=registry)
    x = torch.arange(8.0).view(2, 4)
    out = model(x, torch.ones(2))[0]
    return {"plugin": registry.lookup(type(model)).plugin, "active": handle.active, "seen": model.seen,
            "equal": torch.equal(out, reference(x, torch.ones(2))[0])}


def test_entry_point_plugin_parallelizes_on_two_ranks(tmp_path):
    package = tmp_path / "acme_xcfg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import torch, xcfg

        class AcmeDenoiser(torch.nn.Module):
            seen = []
            def forward(self, hidden_states, timestep):
                type(self).seen.append(hidden_states.shape[0])
                return (hidden_states * 2 + timestep[:, None],)

        @xcfg.hookimpl
        def register_models(register):
            register(xcfg.ModelSpec(model=AcmeDenoiser, batch_inputs=["hidden_states", "timestep"]))
    """))
    info = tmp_path / "acme_xcfg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-xcfg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[xcfg]\nacme = acme_xcfg\n")
    for result in run_ranks(_entry_point_rank, str(tmp_path), timeout=120):
        assert result["plugin"] == "acme" and result["active"]
        assert result["seen"] == [1, 2], "the wrapped model computed 1 per rank, the reference 2"
        assert result["equal"]


def _failing_rank(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank 1")


def test_run_ranks_reports_a_failing_rank():
    with pytest.raises(RanksFailed, match="boom on rank 1"):
        run_ranks(_failing_rank, timeout=60)


def test_toy_spec_is_what_the_tests_use():
    assert TOY_SPEC.resolve() is ToyDenoiser


def _two_call_rank(rank: int, world: int) -> dict:
    from toys import ToyTwoCallPipe, TwoCallPlugin, two_call_model

    registry = xcfg.Registry(autoload=False)
    registry.register(TwoCallPlugin(), name="two-call")
    g = torch.Generator().manual_seed(0)
    latents, positive, negative = (torch.randn(1, n, 4, generator=g) for n in (3, 5, 5))
    reference, pipe = ToyTwoCallPipe(two_call_model()), ToyTwoCallPipe(two_call_model())
    handle = xcfg.parallelize(pipe, registry=registry)
    result = {}
    for label, kwargs in (("cfg", {}), ("cfg_off", {"guidance_scale": 1.0})):
        pipe.transformer.batches.clear()
        reference.transformer.batches.clear()
        actual, expected = pipe(latents, positive, negative, steps=6, **kwargs), reference(latents, positive, negative, steps=6, **kwargs)
        result[label] = (relative_error(actual, expected), len(pipe.transformer.batches), len(reference.transformer.batches))

    class ChangingNegative(ToyTwoCallPipe):
        """The negative prompt changes every step: every prediction misses, the result must not."""

        def __call__(self, latents, prompt_embeds, negative_prompt_embeds, steps=4, guidance_scale=3.0):
            for i in range(steps):
                t = torch.full((1,), float(steps - i))
                cond = self.transformer(latents, prompt_embeds, t, return_dict=False)[0]
                uncond = self.transformer(latents, negative_prompt_embeds * (i + 1), t, return_dict=False)[0]
                latents = latents - 0.1 * (uncond + guidance_scale * (cond - uncond))
            return latents

    handle.remove()
    changing, changing_reference = ChangingNegative(two_call_model()), ChangingNegative(two_call_model())
    xcfg.parallelize(changing, registry=registry)
    error = relative_error(changing(latents, positive, negative, steps=4), changing_reference(latents, positive, negative, steps=4))
    result["misses"] = (error, len(changing.transformer.batches))
    return result


def test_two_call_style_runs_cond_and_uncond_on_two_ranks():
    for result in run_ranks(_two_call_rank, timeout=120):
        error, calls, reference_calls = result["cfg"]
        assert error < 1e-6 and reference_calls == 12
        assert calls == 7, "step 1 runs both calls on every rank, then one call per rank per step"
        error, calls, reference_calls = result["cfg_off"]
        assert error < 1e-6 and calls == reference_calls == 6, "one call per step: every rank computes it"
        error, calls = result["misses"]
        assert error < 1e-6 and calls == 2 + 3 * 2, "a missed prediction is recomputed on every rank"


def _incomplete_spec_rank(rank: int, world: int) -> str:
    registry = xcfg.Registry(autoload=False)

    class Incomplete:  # encoder_hidden_states carries the batch but is not declared
        @xcfg.hookimpl
        def register_models(self, register):
            register(xcfg.ModelSpec(model=ToyDenoiser, batch_inputs=["hidden_states", "timestep"]))

    registry.register(Incomplete(), name="incomplete")
    model = toy_model()
    xcfg.parallelize(model, registry=registry)
    try:
        model(**toy_inputs(2), return_dict=False)
    except xcfg.ShapeError as err:
        return str(err)
    return "no error"


def test_a_spec_missing_a_batch_argument_raises_instead_of_a_wrong_result():
    for message in run_ranks(_incomplete_spec_rank, timeout=120):
        assert "missing from the spec" in message, message
        assert "encoder_hidden_states" in message, "the undeclared argument that carries the batch is named"


def _bare_failure_rank(rank: int, world: int) -> str:
    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    model = toy_model()
    xcfg.parallelize(model, registry=registry)
    x = toy_inputs(2)
    for call in range(3):
        if call == 2 and rank == 1:
            model.proj.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("last call fails")))
        try:
            model(**x, return_dict=False)
        except Exception as err:  # noqa: BLE001 - what each rank raised is the result
            return f"call {call}: {type(err).__name__}: {err}"
    return "no error"


def test_a_bare_denoiser_failing_at_its_last_call_makes_every_rank_raise():
    """No end-of-run exchange follows a hand-written loop, so the failure must surface at that call."""
    rank0, rank1 = run_ranks(_bare_failure_rank, timeout=120)
    assert rank0.startswith("call 2: RankFailedError") and "last call fails" in rank0, rank0
    assert rank1.startswith("call 2: RuntimeError"), rank1


def _explicit_group_and_degree_rank(rank: int, world: int) -> dict:
    import torch.distributed as dist

    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    x = toy_inputs(4)
    reference = toy_model()
    expected = reference(**x, return_dict=False)[0]
    outcomes = {}
    # a torch.distributed process group passed explicitly: all 4 ranks share one CFG batch of 4
    model = toy_model()
    handle = xcfg.parallelize(model, group=dist.new_group(list(range(world))), registry=registry)
    outcomes["group"] = (relative_error(model(**x, return_dict=False)[0], expected), model.batches, handle.group.size)
    handle.remove()
    # degree 4 from the default group: the same split
    model = toy_model()
    handle = xcfg.parallelize(model, degree=4, registry=registry)
    outcomes["degree"] = (relative_error(model(**x, return_dict=False)[0], expected), model.batches, handle.group.size)
    handle.remove()
    return outcomes


def test_an_explicit_process_group_and_a_degree_of_four_split_a_batch_of_four():
    for result in run_ranks(_explicit_group_and_degree_rank, world_size=4, timeout=180):
        for label in ("group", "degree"):
            error, batches, size = result[label]
            assert error < 1e-6 and batches == [1] and size == 4, (label, result)


def _autograd_rank(rank: int, world: int) -> dict:
    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    x = toy_inputs(2)
    reference = toy_model()
    reference(**x, return_dict=False)[0].square().sum().backward()
    model = toy_model()
    xcfg.parallelize(model, registry=registry)
    out = model(**x, return_dict=False)[0]
    out.square().sum().backward()
    return {"batches": model.batches, "grad": model.proj.weight.grad.tolist(), "reference": reference.proj.weight.grad.tolist()}


def test_gradients_flow_through_the_gather():
    # the gather's backward sums every rank's gradient of this rank's share (each rank's loss covers the whole
    # batch): averaged over the ranks, as data parallelism does, the weights' gradient is one process's
    results = run_ranks(_autograd_rank, timeout=120)
    for result in results:
        assert result["batches"] == [1], result
    grads = [torch.tensor(r["grad"]) for r in results]
    reference = torch.tensor(results[0]["reference"])
    assert relative_error(sum(grads) / len(grads), reference) < 1e-5
    assert relative_error(grads[0], reference) > 1e-2, "each rank computed only its share"
