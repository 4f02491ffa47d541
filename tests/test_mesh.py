"""CFG parallelism composed with diffusers' context parallelism, on 4 real gloo ranks.

Each test checks both halves of the promise: the output equals one process (fp32, relative error under
1e-4), and each rank computed only its share, of the CFG batch (calls and batch rows) and of the
sequence (the tokens that reach the last transformer block, counted with a forward pre-hook).

diffusers' ``enable_parallelism`` does not run on a machine without an accelerator as shipped: its
config set-up computes ``rank % torch.accelerator.device_count()``, and the count is 0 there. The tests
(only the tests) see that count as 1 inside that set-up; see :func:`cpu_accelerator_shim`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from parts import part, run_parts

import xcfg
from xcfg.testing import relative_error, run_ranks

pytestmark = [pytest.mark.ranks, pytest.mark.timeout(300)]

BLOCKS = ("transformer_blocks", "blocks")


@contextlib.contextmanager
def cpu_accelerator_shim():
    """Let diffusers' parallel-config set-up run on a CPU-only machine: inside ``_resolve_parallel_config``
    alone, ``torch.accelerator.device_count()`` is 1 instead of 0 (the device it picks, ``cpu:0``, is not
    used by the CPU mesh xcfg passes)."""
    from diffusers.models.modeling_utils import ModelMixin

    original = ModelMixin._resolve_parallel_config
    count = torch.accelerator.device_count

    def resolve(self: Any, config: Any) -> Any:
        torch.accelerator.device_count = lambda: max(count(), 1)
        try:
            return original(self, config)
        finally:
            torch.accelerator.device_count = count

    ModelMixin._resolve_parallel_config = resolve
    try:
        yield
    finally:
        ModelMixin._resolve_parallel_config = original


class TokenCounter:
    """Records ``(batch, tokens)`` of the hidden states reaching a model's last transformer block.

    The last, not the first: diffusers' plans split the sequence in a hook on the first block, which runs
    after a forward pre-hook of that block; every later block receives the split sequence.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        blocks = next(getattr(model, name) for name in BLOCKS if hasattr(model, name))
        assert len(blocks) >= 2, "count on a model with at least 2 blocks"
        self.block = blocks[-1]
        self.calls: list[tuple[int, int]] = []
        self.text: list[int] = []

    def __enter__(self) -> TokenCounter:
        def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.calls.append((int(hidden.shape[0]), int(hidden.shape[1])))
            text = kwargs.get("encoder_hidden_states")
            if isinstance(text, torch.Tensor):
                self.text.append(int(text.shape[1]))

        self.handle = self.block.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.transformer


class DecoderCalls:
    """Counts the calls of a VAE's decoder (the Wan VAE decodes a tile one latent frame per call)."""

    def __init__(self, vae: Any) -> None:
        self.count = 0
        if vae is not None:
            vae.decoder.register_forward_pre_hook(self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def _layout_rank(
    rank: int, world: int, example: str, layout: dict[str, Any], call: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    torch.manual_seed(0)
    layout = dict(layout)
    tiling = layout.pop("vae_tiling", None)
    with cpu_accelerator_shim():
        run = xcfg.build_example(example, size="tiny")
        if tiling:
            run.pipe.vae.enable_tiling(*tiling)
        decoder = DecoderCalls(run.pipe.vae if tiling else None)
        if config:  # a transformer of another config (the tiny examples have 2 heads; Ulysses 4 needs 4)
            old = run.pipe.transformer
            config = dict(config)
            if "num_attention_heads" in config:
                dim = old.config.num_attention_heads * old.config.attention_head_dim
                config["attention_head_dim"] = dim // config["num_attention_heads"]
            run.pipe.transformer = type(old).from_config({**old.config, **config})
        call = dict(call)
        text = call.pop("text_tokens", None)
        hidden = call.pop("masked_tokens", 0)
        kwargs = {**run.kwargs, **call, "output_type": "pt"}
        if text:  # shorter prompt embeddings (and masks)
            names = ("prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask", "negative_prompt_attention_mask")
            kwargs.update({k: kwargs[k][:, :text] for k in names if k in kwargs})
        for name in ("prompt_attention_mask", "negative_prompt_attention_mask"):
            if hidden and name in kwargs:  # the prompt's last tokens are padding
                kwargs[name] = kwargs[name].clone()
                kwargs[name][:, -hidden:] = 0
        model = _denoiser(run.pipe)
        with TokenCounter(model) as single:
            expected = getattr(run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)), run.output)
        decoded = {"single": decoder.take()}
        if layout.pop("own_mesh", False):  # the user's own mesh: used as it is, never destroyed by xcfg
            from torch.distributed.device_mesh import init_device_mesh

            layout["mesh"] = init_device_mesh("cpu", (2, 1, 2), mesh_dim_names=("cfg", "ring", "ulysses"))
        groups_before = _process_groups()
        handle = xcfg.parallelize(run.pipe, **layout)
        groups_during = _process_groups()
        with TokenCounter(model) as parallel:
            actual = getattr(run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)), run.output)
        decoded["parallel"] = decoder.take()
        hooks = sorted(model._diffusers_hook.hooks) if hasattr(model, "_diffusers_hook") else []
        shape = handle.layout.shape if handle.layout else None
        groups = len(handle.mesh.mesh_dim_names) if handle.mesh is not None else 0
        predictions = handle.wrapped[0].predictions if handle.wrapped else 0
        handle.remove()
        groups_after = _process_groups()
        with TokenCounter(model) as after:
            again = getattr(run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)), run.output)
        decoded["after"] = decoder.take()
        left = sorted(model._diffusers_hook.hooks) if hasattr(model, "_diffusers_hook") else []
        return {
            "error": relative_error(actual, expected),
            "error_after_remove": relative_error(again, expected),
            "single": single.calls, "parallel": parallel.calls, "after": after.calls,
            "single_text": single.text, "parallel_text": parallel.text,
            "hooks": hooks, "hooks_after_remove": left, "shape": shape, "dims": groups,
            "predictions": predictions, "groups": (groups_before, groups_during, groups_after),
            "parallel_config_after_remove": getattr(model, "_parallel_config", None) is not None,
            "decoder_calls": decoded,
        }


def _process_groups() -> int:
    """The process groups this rank belongs to (torch's registry of live groups)."""
    from torch.distributed import distributed_c10d

    return len(distributed_c10d._world.pg_map)


def _check_shares(
    results: list[dict[str, Any]], cfg: int, context: int, two_call: bool, kept_groups: int = 0
) -> None:
    single = results[0]["single"]
    for rank, result in enumerate(results):
        before, during, after = result["groups"]
        assert during >= before and after == before + kept_groups, ("remove() destroys the groups xcfg made", rank,
                                                                    result["groups"])
        assert result["error"] < 1e-4, (rank, result["error"])
        assert result["error_after_remove"] < 1e-6, (rank, result["error_after_remove"])
        assert result["after"] == single and not result["parallel_config_after_remove"], result
        assert not any(h.startswith("cp_") or h == "xcfg" for h in result["hooks_after_remove"]), result
        tokens = [t for _, t in result["parallel"]]
        # the sequence: each rank's first block sees 1/context of the tokens (Ulysses "anything" splits an
        # uneven length with tensor_split: the larger shares first)
        expected_tokens = [_share(t, context, result["rank_in_context"]) for _, t in single][: len(tokens)]
        assert tokens == expected_tokens, (rank, tokens, single)
        # the CFG batch: batched style, half the rows per call; two-call style, one call saved per prediction
        if two_call and cfg == 2:
            assert len(result["parallel"]) == len(single) - result["predictions"], result
            assert result["predictions"] >= 1, result
        else:
            assert [b for b, _ in result["parallel"]] == [b // cfg for b, _ in single], result


WAN_TILING = (16, 16, 8, 8)  # the tiny Wan latent (3 frames, 4x4) in tiles of 2x2, one apart: 16 tiles


def _check_vae_split(results: list[dict[str, Any]], ranks: int) -> None:
    """The tiled decode of the tiny Wan pipeline was split across all ``ranks`` of the layout, not only the CFG
    pair: each rank decoded the tiles ``assign`` gives it among ``ranks`` (3 decoder calls per tile, one per latent
    frame), and the decoded frames equal one process (checked with the rest of the output)."""
    from xcfg._vae import assign

    areas = [min(2, 4 - i) * min(2, 4 - j) for i in range(4) for j in range(4)]  # as the Wan plugin costs them
    owners = assign(areas, ranks)
    assert results[0]["decoder_calls"]["single"] == 16 * 3, results[0]["decoder_calls"]
    for rank, result in enumerate(results):
        calls = result["decoder_calls"]
        assert calls["parallel"] == owners.count(rank) * 3, (rank, calls, owners)
        assert calls["after"] == calls["single"] == 16 * 3, (rank, calls)  # remove(): every rank decodes whole again
    assert sum(r["decoder_calls"]["parallel"] for r in results) == 16 * 3, "no tile decoded twice"


def _share(tokens: int, parts: int, index: int) -> int:
    return tokens // parts + (1 if index < tokens % parts else 0)


def _run(
    example: str, layout: dict[str, Any], call: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
    world: int = 4,
) -> list[dict[str, Any]]:
    call = {"num_inference_steps": 2, **(call or {})}
    results = run_ranks(_layout_rank, example, layout, call, config or {}, world_size=world, timeout=240)
    cfg, ring, ulysses = results[0]["shape"]  # the layout parallelize planned
    plan = xcfg.plan_layout(world, cfg=cfg, ring=ring, ulysses=ulysses)
    for rank, result in enumerate(results):
        result["rank_in_context"] = plan.context_ranks(rank).index(rank)
    return results


def test_wan_cfg2_ulysses2_equals_one_process_and_splits_calls_tokens_and_vae_tiles():
    # with the VAE tiled: the decode is split over all 4 ranks of the mesh (not twice over each CFG pair)
    results = _run("wan", {"degree": 2, "ulysses_degree": 2, "vae_tiling": WAN_TILING})
    assert results[0]["shape"] == (2, 1, 2)
    assert all(r["groups"][1] > r["groups"][0] for r in results)  # xcfg made groups, and destroyed them
    assert {"xcfg", "cp_input---"} <= set(results[0]["hooks"]), results[0]["hooks"]
    _check_shares(results, cfg=2, context=2, two_call=True)
    assert all(t == 12 for _, t in results[0]["single"])  # 3 latent frames x 2 x 2 patches
    _check_vae_split(results, 4)


def test_ulysses4_without_cfg_equals_one_process_and_splits_the_vae_over_the_4_ranks():
    results = _run("wan", {"degree": 1, "ulysses_degree": 4, "vae_tiling": WAN_TILING}, {"num_inference_steps": 1},
                   {"num_attention_heads": 4})
    _check_shares(results, cfg=1, context=4, two_call=False)
    _check_vae_split(results, 4)


class Boom(RuntimeError):
    pass


def _fault_rank(rank: int, world: int, failing: int) -> dict[str, Any]:
    import datetime
    import time

    torch.manual_seed(0)
    with cpu_accelerator_shim():
        run = xcfg.build_example("wan", size="tiny")
        kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
        handle = xcfg.parallelize(run.pipe, degree=2, ulysses_degree=2, timeout=datetime.timedelta(seconds=20))
        calls = {"n": 0}

        def fail(*_: Any) -> None:
            calls["n"] += 1
            if rank == failing and calls["n"] == 2:  # the second block call: inside the parallel run
                raise Boom(f"rank {rank} failed on purpose")

        blocks = run.pipe.transformer.blocks
        blocks[-1].register_forward_pre_hook(fail)
        start = time.monotonic()
        try:
            run.pipe(**kwargs, generator=torch.Generator().manual_seed(7))
            outcome = "finished"
        except BaseException as err:  # every rank must get here, none may hang
            outcome = f"{type(err).__name__}: {str(err)[:200]}"
        if rank == failing:
            time.sleep(25)  # stay alive, groups intact: the peers must not depend on this process exiting
        handle.remove()
        return {"outcome": outcome, "seconds": time.monotonic() - start}


def test_a_failing_rank_makes_every_rank_raise_on_4_ranks():
    results = run_ranks(_fault_rank, 3, world_size=4, timeout=240)
    assert results[3]["outcome"].startswith("Boom"), results[3]
    # its CFG peer hears of it at once through xcfg's control plane; its sequence peer, stuck in an attention
    # all-to-all, and that rank's CFG peer raise when xcfg's timeout (20 s here) runs out: every rank raises
    # (the sequence peer's wait is inside diffusers' all-to-all, not xcfg's group: it raises the backend's own
    # timeout error, which docs/layouts.md lists as a limit)
    for rank in (0, 1, 2):
        outcome = results[rank]["outcome"]
        backend_timeout = outcome.startswith("RuntimeError") and "Timed out" in outcome
        assert outcome.startswith(("RankFailedError", "RankTimeoutError")) or backend_timeout, (rank, results[rank])
        assert results[rank]["seconds"] < 60, (rank, results[rank])


def test_cogvideox_cfg2_ulysses2_splits_text_and_image_tokens():
    results = _run("cogvideox", {"degree": 2, "ulysses_degree": 2})
    _check_shares(results, cfg=2, context=2, two_call=False)
    for result in results:  # the text tokens are split with the image tokens
        context = result["rank_in_context"]
        assert result["parallel_text"] == [_share(t, 2, context) for t in result["single_text"]], result


def test_cogvideox_uneven_text_and_image_with_rotary_embeddings():
    # CogVideoX-5B's layout in small: rotary embeddings; 9 image tokens (3 frames x 1 x 3 patches) and 7 text
    # tokens, neither divisible by 2: diffusers' ulysses_anything splits them 5/4 and 4/3
    results = _run(
        "cogvideox", {"degree": 2, "ulysses_degree": 2}, {"height": 16, "width": 48, "text_tokens": 7},
        {"use_rotary_positional_embeddings": True, "max_text_seq_length": 7},
    )
    assert results[0]["single"][0][1] == 9 and results[0]["single_text"][0] == 7, results[0]
    _check_shares(results, cfg=2, context=2, two_call=False)
    for result in results:
        context = result["rank_in_context"]
        assert result["parallel_text"] == [_share(t, 2, context) for t in result["single_text"]], result


def test_mochi_cfg2_ulysses2_with_its_prompt_mask():
    # Mochi-1's 20,670 image tokens divide by 2, not 4; here 7 text tokens (the mask hides the last 2), shared
    # 4/3 on the two ranks of a sequence, so the mask is split unevenly too
    results = _run("mochi", {"degree": 2, "ulysses_degree": 2}, {"text_tokens": 7, "masked_tokens": 2})
    _check_shares(results, cfg=2, context=2, two_call=False)
    for result in results:
        context = result["rank_in_context"]
        assert result["parallel_text"] == [_share(t, 2, context) for t in result["single_text"]], result


def test_sd3_cfg2_ulysses2_with_an_odd_prompt():
    results = _run("sd3", {"degree": 2, "ulysses_degree": 2}, {"text_tokens": 5})  # 5 text tokens: 3/2
    _check_shares(results, cfg=2, context=2, two_call=False)
    for result in results:
        context = result["rank_in_context"]
        assert result["parallel_text"] == [_share(t, 2, context) for t in result["single_text"]], result


def test_hunyuan_video_true_cfg2_ulysses2_with_its_prompt_mask():
    # two-call (true CFG): the cond call has 8 text tokens, the uncond call 6; one key mask over the whole
    # sequence, cut to each rank's image and text shares
    results = _run("hunyuan-video", {"degree": 2, "ulysses_degree": 2, "true_cfg": True}, {"masked_tokens": 3},
                   {"num_layers": 2})
    _check_shares(results, cfg=2, context=2, two_call=True)


def test_cogvideox_cfg2_ulysses4_on_8_ranks():
    results = _run("cogvideox", {"degree": 2, "ulysses_degree": 4}, {"num_inference_steps": 1},
                   {"num_attention_heads": 4}, world=8)
    _check_shares(results, cfg=2, context=4, two_call=False)


def _refusal_rank(rank: int, world: int) -> dict[str, str]:
    with cpu_accelerator_shim():
        runs = {name: xcfg.build_example(name, size="tiny") for name in ("wan", "ltx", "ltx2")}
        before = _process_groups()
        out = {}
        for label, (name, layout) in {
            "ring_on_native": ("wan", {"degree": 2, "ring_degree": 2}),  # native attention has no log-sum-exp
            "product": ("wan", {"degree": 2, "ulysses_degree": 4}),       # 8 ranks asked, 4 launched
            "heads": ("wan", {"degree": 1, "ulysses_degree": 4}),         # 2 heads over 4 ranks
            # diffusers' LTX attention: Ulysses fails inside it, ring masks a padded prompt wrongly
            "ltx_ulysses": ("ltx", {"degree": 2, "ulysses_degree": 2, "uneven": "even"}),
            "ltx_ring": ("ltx", {"degree": 2, "ring_degree": 2}),
            # diffusers' LTX-2 plan splits the per-head rotary tables along the heads
            "ltx2_ulysses": ("ltx2", {"degree": 2, "ulysses_degree": 2}),
        }.items():
            try:
                xcfg.parallelize(runs[name].pipe, **layout)
                out[label] = "accepted"
            except xcfg.SetupError as err:
                out[label] = str(err)
        out["groups_unchanged"] = str(_process_groups() == before)
        out["untouched"] = str(all(not getattr(run.pipe.transformer, "_diffusers_hook", None)
                                   or not run.pipe.transformer._diffusers_hook.hooks for run in runs.values()))
        return out


def _vae_fault_rank(rank: int, world: int, failing: int) -> dict[str, Any]:
    """A rank fails decoding its VAE tiles under cfg 2 x ulysses 2: every rank of the mesh must raise at once
    (the decode's failure, agreed over the mesh group, also closes each CFG pair's pipeline call), and the next
    call must work."""
    import datetime
    import time

    torch.manual_seed(0)
    with cpu_accelerator_shim():
        run = xcfg.build_example("wan", size="tiny")
        run.pipe.vae.enable_tiling(*WAN_TILING)
        kwargs = {**run.kwargs, "num_inference_steps": 1, "output_type": "pt"}
        expected = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames
        handle = xcfg.parallelize(run.pipe, degree=2, ulysses_degree=2, timeout=datetime.timedelta(seconds=30))
        armed = {"on": rank == failing}

        def fail(*_: Any) -> None:
            if armed["on"]:
                armed["on"] = False
                raise Boom(f"rank {rank} failed decoding on purpose")

        hook = run.pipe.vae.decoder.register_forward_pre_hook(fail)
        start = time.monotonic()
        try:
            run.pipe(**kwargs, generator=torch.Generator().manual_seed(7))
            outcome = "finished"
        except BaseException as err:
            outcome = f"{type(err).__name__}: {str(err)[:300]}"
        seconds = time.monotonic() - start
        again = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames
        hook.remove()
        handle.remove()
        return {"outcome": outcome, "seconds": seconds, "again": relative_error(again, expected)}


def _four_rank_checks(rank: int, world: int) -> dict[str, Any]:
    return run_parts(rank, world, {"refusals": (_refusal_rank, ()), "vae_fault": (_vae_fault_rank, (3,))})


@pytest.fixture(scope="module")
def four_ranks() -> list[dict[str, Any]]:
    """One 4-rank launch for the checks that need no launch of their own (a launch costs 20-40 s on 2 cores)."""
    return run_ranks(_four_rank_checks, world_size=4, timeout=240)


def test_refusals_come_before_any_collective_on_every_rank(four_ranks):
    # a rank that raised before a collective its peers entered would leave them waiting: every rank refuses,
    # and no process group was created
    for result in part(four_ranks, "refusals"):
        assert "log-sum-exp" in result["ring_on_native"] and "ulysses_degree=2" in result["ring_on_native"]
        assert "torchrun --nproc-per-node 8" in result["product"]
        assert "2 attention heads" in result["heads"]
        for label in ("ltx_ulysses", "ltx_ring"):
            text = result[label]
            assert "LTXVideoTransformer3DModel" in text and "LTX-Video" in text and "Ulysses" in text, text
            assert "ring attention" in text and "parallelize(pipe, degree=2)" in text, text
        text = result["ltx2_ulysses"]
        assert "LTX2VideoTransformer3DModel" in text and "rotary tables" in text and "degree=2" in text, text
        assert result["groups_unchanged"] == "True" and result["untouched"] == "True", result


def test_a_rank_failing_in_the_vae_decode_stops_every_rank_of_the_mesh_at_once(four_ranks):
    results = part(four_ranks, "vae_fault")
    assert results[3]["outcome"].startswith("Boom"), results[3]
    for rank in (0, 1, 2):  # told through the mesh group's control plane, not left to the 30 s timeout
        assert results[rank]["outcome"].startswith("RankFailedError"), (rank, results[rank])
        assert "mesh group [0, 1, 2, 3]" in results[rank]["outcome"], (rank, results[rank])
    for rank, result in enumerate(results):
        assert result["seconds"] < 15, (rank, result)
        assert result["again"] < 1e-4, (rank, result)  # the next call runs, and equals one process


def test_a_users_own_mesh():
    results = _run("wan", {"own_mesh": True, "vae_tiling": WAN_TILING})
    assert results[0]["shape"] == (2, 1, 2)
    # xcfg destroys its CFG control group and the group it made for the VAE over the mesh's ranks; the
    # ring x ulysses group diffusers flattened out of the user's mesh stays with that mesh (cached there for the
    # next enable_parallelism), as do the mesh's own groups
    _check_shares(results, cfg=2, context=2, two_call=True, kept_groups=1)
    _check_vae_split(results, 4)  # the VAE decode spans all the ranks of the user's mesh


@pytest.mark.parametrize(
    ("example", "layout", "two_call"),
    [
        ("qwenimage", {"degree": 2, "ulysses_degree": 2, "true_cfg": True}, True),
        ("flux", {"degree": 2, "ulysses_degree": 2, "true_cfg": True}, True),
    ],
)
def test_diffusers_own_plans_compose(example, layout, two_call):
    results = _run(example, layout, config={"num_layers": 2} if example == "flux" else None)
    _check_shares(results, cfg=2, context=2, two_call=two_call)
