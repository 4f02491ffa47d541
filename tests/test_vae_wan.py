"""The Wan VAE (``AutoencoderKLWan``) decode split on 2 real gloo ranks.

One pair of rank processes decodes a latent that spans 12 uneven tiles with Wan 2.1's VAE and with a
``patch_size=2`` VAE (Wan 2.2 TI2V's layout), then runs the tiny Wan pipeline end to end with tiling on. Each
check compares with the 1-process tiled decode and counts the decoder calls each rank made: one per latent
frame of each tile it decoded.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from parts import Calls, part, run_parts

import xcfg
from xcfg._vae import assign
from xcfg.testing import relative_error, run_ranks

TIMEOUT = 240.0
FRAMES, HEIGHT, WIDTH = 3, 7, 5  # latent: 3 frames, 7x5, tiles of 4x4 two apart: 4 rows x 3 columns, uneven


def _vae(patch: bool) -> Any:
    import diffusers

    from xcfg_plugins import wan

    config = dict(wan.CONFIGS["tiny"]["vae"])
    if patch:  # Wan 2.2 TI2V's VAE packs 2x2 pixels into the channels: 16x spatial compression in all
        config.update(patch_size=2, in_channels=12, out_channels=12, is_residual=True, scale_factor_spatial=16)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(**config).eval()
    ratio = vae.spatial_compression_ratio
    vae.enable_tiling(4 * ratio, 4 * ratio, 2 * ratio, 2 * ratio)  # latent tiles of 4x4, 2 apart
    return vae


def _decode_rank(rank: int, world: int, patch: bool) -> dict[str, Any]:
    vae = _vae(patch)
    z = torch.randn(1, 4, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    calls = Calls(vae.decoder)
    with torch.no_grad():
        expected = vae.decode(z).sample
        single = calls.take()
        undo = xcfg.install_vae_split(vae, xcfg.CFGGroup.create(2))
        actual = vae.decode(z).sample
        undo()
    return {"error": relative_error(actual, expected), "single": single, "calls": calls.take(),
            "shape_ok": actual.shape == expected.shape}


def _pipeline_rank(rank: int, world: int) -> dict[str, Any]:
    run = xcfg.build_example("wan", size="tiny")
    pipe = run.pipe
    pipe.vae.enable_tiling(16, 16, 8, 8)  # latent 4x4 in tiles of 2x2, one apart: 16 tiles
    calls = Calls(pipe.vae.decoder)
    kwargs = {**run.kwargs, "output_type": "pt"}

    def frames() -> torch.Tensor:
        return pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames

    expected = frames()
    single = calls.take()
    with xcfg.parallelize(pipe):
        actual = frames()
    return {"error": relative_error(actual, expected), "single": single, "calls": calls.take()}


def _every_check(rank: int, world: int) -> dict[str, Any]:
    parts = {"wan2.1": (_decode_rank, (False,)), "patch2": (_decode_rank, (True,)), "pipeline": (_pipeline_rank, ())}
    return run_parts(rank, world, parts)


@pytest.fixture(scope="module")
def every_rank() -> list[dict[str, Any]]:
    return run_ranks(_every_check, timeout=TIMEOUT)


@pytest.mark.ranks
@pytest.mark.parametrize("name", ["wan2.1", "patch2"])
def test_wan_split_decode_equals_one_process_and_each_rank_decodes_its_tiles(every_rank, name):
    ranks = part(every_rank, name)
    # the tiles' areas in latent pixels, row-major, as the plugin costs them; each tile is decoded frame by frame
    areas = [min(4, HEIGHT - i) * min(4, WIDTH - j) for i in range(0, HEIGHT, 2) for j in range(0, WIDTH, 2)]
    owners = assign(areas, 2)
    assert ranks[0]["single"] == len(areas) * FRAMES == 36
    for rank, r in enumerate(ranks):
        assert r["shape_ok"] and r["error"] < 1e-4, r
        assert r["calls"] == owners.count(rank) * FRAMES, (rank, r, owners)
    assert 0 < ranks[0]["calls"] < ranks[0]["single"]


@pytest.mark.ranks
def test_wan_pipeline_end_to_end_splits_the_decode(every_rank):
    ranks = part(every_rank, "pipeline")
    single = ranks[0]["single"]
    assert single == 16 * 3, ranks  # 16 tiles x 3 latent frames (9 frames)
    assert [r["calls"] for r in ranks] == [single // 2] * 2, ranks
    for r in ranks:
        assert r["error"] < 1e-4, r


def test_wan_vae_spec_is_registered(registry):
    import diffusers

    entry = registry.lookup(diffusers.AutoencoderKLWan, kind=xcfg.VAESpec)
    assert entry is not None and isinstance(entry.spec, xcfg.VAESpec)
