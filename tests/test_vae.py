"""The VAE decode split on real gloo ranks: equal to the 1-process tiled decode, each rank decodes its share.

One pair of rank processes runs every check of every VAE family and the pipeline check (starting ranks and
importing the VAE modules is the costly part); the tests below read their results. Each VAE is tiny, built
from the plugin's config with random weights, with tiles small enough that the latent spans several of
them, uneven at the edges.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from parts import Calls, part, run_parts

import xcfg
from xcfg.testing import relative_error, run_ranks

TIMEOUT = 240.0  # below pytest-timeout's 300 s, so a hang reports every rank's traceback
TOLERANCE = 1e-5


def _vae(family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The family's tiny VAE with small tiles, and a latent that spans several tiles (same on every rank)."""
    import diffusers

    from xcfg_plugins import cogvideox, mochi, sd3

    torch.manual_seed(0)
    if family == "cogvideox":
        vae = diffusers.AutoencoderKLCogVideoX(**cogvideox.CONFIGS["tiny"]["vae"])
        vae.enable_tiling(24, 24, 1 / 3, 1 / 3)  # latent tiles 3x3, 2 apart: 2x2 tiles (3 and 2 wide) for 4x4
        z = torch.randn(1, 4, 5, 4, 4)  # 5 latent frames: two frame batches (3 + 2) per tile
    elif family == "mochi":
        vae = diffusers.AutoencoderKLMochi(**mochi.CONFIGS["tiny"]["vae"])
        vae.enable_tiling(24, 24, 16, 16)  # latent tiles 3x3, 2 apart: 2x2 tiles (3 and 2 wide) for 4x4
        z = torch.randn(1, 12, 2, 4, 4)
    else:
        vae = diffusers.AutoencoderKL(**sd3.CONFIGS["tiny"]["vae"])
        vae.enable_tiling()
        vae.enable_slicing()  # batch 2, one tiled decode per sample: two splits per decode
        vae.tile_sample_min_size, vae.tile_latent_min_size = 16, 8  # 3x3 tiles for 16x16
        z = torch.randn(2, 4, 16, 16)
    return vae.eval(), z


def _family_rank(rank: int, world: int, family: str) -> dict[str, Any]:
    from xcfg._session import Session

    vae, z = _vae(family)
    calls = Calls(vae.decoder)
    out: dict[str, Any] = {"rank": rank}
    with torch.no_grad():
        expected = vae.decode(z).sample  # the 1-process tiled decode
        out["single_calls"] = calls.take()
        vae.disable_tiling()
        whole = vae.decode(z).sample
        out["whole_calls"] = calls.take()
        vae.enable_tiling()  # keeps the small tiles set above
        signature = inspect.signature(vae.tiled_decode)

        group = xcfg.CFGGroup.create(2)
        session = Session(group)
        undo = xcfg.install_vae_split(vae, group, session)
        out["installed"] = undo is not None and "tiled_decode" in vae.__dict__
        out["signature_kept"] = inspect.signature(vae.tiled_decode) == signature
        try:
            xcfg.install_vae_split(vae, group, session)
        except xcfg.SetupError:
            out["twice_refused"] = True

        actual = vae.decode(z).sample
        out["all_error"] = relative_error(actual, expected)
        out["all_calls"] = calls.take()

        vae.disable_tiling()
        actual = vae.decode(z).sample
        out["untiled_error"] = relative_error(actual, whole)
        out["untiled_calls"] = calls.take()
        vae.enable_tiling()
        undo()

        undo = xcfg.install_vae_split(vae, group, session, output="rank0")
        actual = vae.decode(z, return_dict=False)[0]
        out["rank0_calls"] = calls.take()
        out["rank0_shape_ok"] = actual.shape == expected.shape and actual.dtype == expected.dtype
        if rank == 0:
            out["rank0_error"] = relative_error(actual, expected)
        else:
            # zeros; an expanded view of one element, unless decode concatenated slices (sd3 here)
            out["rank0_placeholder"] = bool((actual == 0).all()) and (vae.use_slicing or set(actual.stride()) == {0})
        undo()
        out["removed"] = "tiled_decode" not in vae.__dict__ and vae.tiled_decode.__func__ is type(vae).tiled_decode
        out["signature_restored"] = inspect.signature(vae.tiled_decode) == signature

        # rank 1 fails decoding its tiles; then, with the result on rank 0 only, rank 0 fails blending alone
        # while rank 1 waits for the result's shape
        def boom(*_: Any) -> None:
            raise RuntimeError(f"boom on rank {rank}")

        out["failures"] = {}
        for where, output in (("tiles", "all"), ("blend", "rank0")):
            undo = xcfg.install_vae_split(vae, group, session, output=output)
            hook = vae.decoder.register_forward_pre_hook(boom) if where == "tiles" and rank == 1 else None
            if where == "blend" and rank == 0:
                vae.blend_v = boom
            try:
                vae.decode(z)
                out["failures"][where] = ("none", "")
            except Exception as err:
                out["failures"][where] = (type(err).__name__, str(err))
            finally:
                undo()
                vae.__dict__.pop("blend_v", None)
                if hook is not None:
                    hook.remove()
    return out


FAMILIES = ["cogvideox", "mochi", "sd3"]


def _every_check(rank: int, world: int) -> dict[str, Any]:
    """Each family's checks, then the pipeline's; a part that raises reports its traceback instead."""
    parts = {name: (_family_rank, (name,)) for name in FAMILIES}
    parts["pipeline"] = (_pipeline_rank, ())
    return run_parts(rank, world, parts)


@pytest.fixture(scope="module")
def every_rank() -> list[dict[str, Any]]:
    return run_ranks(_every_check, timeout=TIMEOUT)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest, every_rank: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    return request.param, part(every_rank, request.param)


@pytest.mark.ranks
def test_split_decode_equals_one_process_tiled_decode(family):
    name, ranks = family
    for r in ranks:
        assert r["installed"] and r["signature_kept"], r
        assert r["all_error"] < TOLERANCE, r


@pytest.mark.ranks
def test_each_rank_decodes_only_its_share_of_tiles(family):
    name, ranks = family
    single = ranks[0]["single_calls"]
    shares = [r["all_calls"] for r in ranks]
    assert single >= 4, "the latent must span several tiles"
    assert sum(shares) == single and all(0 < s < single for s in shares), (single, shares)
    assert max(shares) - min(shares) <= single // 2, f"unbalanced: {shares}"
    assert [r["rank0_calls"] for r in ranks] == shares, "rank-0 output mode splits the same way"


@pytest.mark.ranks
def test_rank0_output_mode(family):
    name, ranks = family
    assert ranks[0]["rank0_error"] < TOLERANCE, ranks[0]
    assert ranks[1]["rank0_shape_ok"] and ranks[1]["rank0_placeholder"], ranks[1]


@pytest.mark.ranks
def test_decode_without_tiling_runs_whole_on_every_rank(family):
    name, ranks = family
    for r in ranks:
        assert r["untiled_error"] < TOLERANCE, r
        assert r["untiled_calls"] == r["whole_calls"], r


@pytest.mark.ranks
def test_removal_restores_the_vae(family):
    name, ranks = family
    for r in ranks:
        assert r["removed"] and r["signature_restored"] and r["twice_refused"], r


@pytest.mark.ranks
@pytest.mark.parametrize("where, failing", [("tiles", 1), ("blend", 0)])
def test_a_failing_rank_makes_every_rank_raise(family, where, failing):
    name, ranks = family
    (kind, message), (other_kind, other_message) = ranks[failing]["failures"][where], ranks[1 - failing]["failures"][where]
    assert kind == "RuntimeError" and f"boom on rank {failing}" in message, ranks
    assert other_kind == "RankFailedError", ranks
    assert f"rank {failing}" in other_message and "boom" in other_message, ranks


def _pipeline_rank(rank: int, world: int) -> dict[str, Any]:
    run = xcfg.build_example("cogvideox", size="tiny")
    pipe = run.pipe
    pipe.vae.enable_tiling(24, 24, 1 / 3, 1 / 3)  # latent tiles 3x3, 2 apart: 2x2 tiles for the 4x4 latent
    calls = Calls(pipe.vae.decoder)
    kwargs = {**run.kwargs, "output_type": "pt"}

    def frames() -> torch.Tensor:
        return pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames

    expected = frames()
    out: dict[str, Any] = {"single_calls": calls.take()}
    with xcfg.parallelize(pipe) as handle:
        out["active"] = handle.active
        out["error"] = relative_error(frames(), expected)
        out["calls"] = calls.take()
    out["restored"] = "tiled_decode" not in pipe.vae.__dict__
    with xcfg.parallelize(pipe, vae_output="rank0"):
        actual = frames()
        out["rank0_shape_ok"] = actual.shape == expected.shape
        if rank == 0:
            out["rank0_error"] = relative_error(actual, expected)
        kwargs["output_type"] = "pil"  # the pipeline's post-processing works on the placeholder too
        out["pil_frames"] = len(frames()[0])
    return out


@pytest.mark.ranks
def test_pipeline_end_to_end_equals_one_process(every_rank):
    ranks = part(every_rank, "pipeline")
    single = ranks[0]["single_calls"]
    assert single >= 3, ranks
    assert sum(r["calls"] for r in ranks) == single and all(0 < r["calls"] < single for r in ranks), ranks
    for r in ranks:
        assert r["active"] and r["restored"] and r["rank0_shape_ok"], r
        assert r["error"] < 1e-4, r
        assert r["pil_frames"] == 9, r
    assert ranks[0]["rank0_error"] < 1e-4, ranks[0]


def test_vae_spec_is_validated():
    spec = xcfg.VAESpec(model="diffusers:AutoencoderKL", tiled_decode=lambda vae, z, pmap: None)
    assert spec.name == "AutoencoderKL" and spec.resolve().__name__ == "AutoencoderKL"
    with pytest.raises(xcfg.SpecError, match="model"):
        xcfg.VAESpec(model="not a path", tiled_decode=lambda vae, z, pmap: None)
    with pytest.raises(xcfg.SpecError, match="tiled_decode"):
        xcfg.VAESpec(model="diffusers:AutoencoderKL")
    with pytest.raises(ValueError, match="vae_output"):
        xcfg.parallelize(torch.nn.Linear(2, 2), vae_output="rank1")


def test_builtin_vae_specs_are_registered(registry):
    import diffusers

    for cls in (diffusers.AutoencoderKLCogVideoX, diffusers.AutoencoderKLMochi, diffusers.AutoencoderKL):
        entry = registry.lookup(cls, kind=xcfg.VAESpec)
        assert entry is not None and isinstance(entry.spec, xcfg.VAESpec), cls
    assert all(isinstance(e.spec, xcfg.ModelSpec) for e in registry.specs()), "specs() lists denoisers only"
