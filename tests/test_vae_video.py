"""The decode split of HunyuanVideo's, LTX-Video's and LTX-2's video VAEs on 2 real gloo ranks.

One pair of rank processes decodes, with each family's tiny VAE, a latent that spans 12 uneven spatial
tiles; also HunyuanVideo's frame-chunked decode (each chunk's tiles split), LTX-Video's decode with a
timestep (``timestep_conditioning``), LTX-2's with ``causal``; then the tiny LTX pipeline end to end with
tiling on. Each check compares with the 1-process tiled decode and counts the decoder calls each rank made:
one per tile it decoded.
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
FRAMES, HEIGHT, WIDTH = 3, 8, 6  # latent: tiles of 4x4 two apart: 4 rows x 3 columns, half tiles at the edges
AREAS = [min(4, HEIGHT - i) * min(4, WIDTH - j) for i in range(0, HEIGHT, 2) for j in range(0, WIDTH, 2)]


def _vae(family: str) -> tuple[Any, dict[str, Any]]:
    """The family's tiny VAE with latent tiles of 4x4, 2 apart, and the extra ``decode`` arguments."""
    import diffusers

    from xcfg_plugins import hunyuan_video, ltx, ltx2

    extra: dict[str, Any] = {}
    frames: dict[str, int] = {}
    if family.startswith("hunyuan"):
        cls, config = diffusers.AutoencoderKLHunyuanVideo, dict(hunyuan_video.CONFIGS["tiny"]["vae"])
        if family == "hunyuan-chunks":  # 3 latent frames in chunks of 2+1, one apart: 3 chunks, each tiled
            frames = dict(tile_sample_min_num_frames=8, tile_sample_stride_num_frames=4)
    elif family.startswith("ltx2"):
        cls, config = diffusers.AutoencoderKLLTX2Video, dict(ltx2.CONFIGS["tiny"]["vae"])
        extra = {"causal": True}
    else:
        cls, config = diffusers.AutoencoderKLLTXVideo, dict(ltx.CONFIGS["tiny"]["vae"])
        if family == "ltx-timestep":
            config["timestep_conditioning"] = True
            extra = {"temb": torch.tensor([0.05])}
    torch.manual_seed(0)
    vae = cls(**config).eval()
    ratio = vae.spatial_compression_ratio
    vae.enable_tiling(tile_sample_min_height=4 * ratio, tile_sample_min_width=4 * ratio,
                      tile_sample_stride_height=2 * ratio, tile_sample_stride_width=2 * ratio, **frames)
    vae.use_framewise_decoding = bool(frames)
    return vae, extra


def _decode_rank(rank: int, world: int, family: str) -> dict[str, Any]:
    vae, extra = _vae(family)
    channels = vae.config.latent_channels
    z = torch.randn(1, channels, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    calls = Calls(vae.decoder)
    with torch.no_grad():
        expected = vae.decode(z, **extra).sample
        single = calls.take()
        undo = xcfg.install_vae_split(vae, xcfg.CFGGroup.create(2))
        actual = vae.decode(z, **extra).sample
        undo()
    return {"error": relative_error(actual, expected), "single": single, "calls": calls.take(),
            "shape_ok": actual.shape == expected.shape}


def _pipeline_rank(rank: int, world: int) -> dict[str, Any]:
    run = xcfg.build_example("ltx", size="tiny")
    pipe = run.pipe
    ratio = pipe.vae.spatial_compression_ratio  # 32x32 pixels: a latent of 8x8 in tiles of 4x4, 2 apart: 16 tiles
    pipe.vae.enable_tiling(tile_sample_min_height=4 * ratio, tile_sample_min_width=4 * ratio,
                           tile_sample_stride_height=2 * ratio, tile_sample_stride_width=2 * ratio)
    calls = Calls(pipe.vae.decoder)
    kwargs = {**run.kwargs, "output_type": "pt"}

    def frames() -> torch.Tensor:
        return pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames

    expected = frames()
    single = calls.take()
    with xcfg.parallelize(pipe):
        actual = frames()
    return {"error": relative_error(actual, expected), "single": single, "calls": calls.take()}


FAMILIES = ["hunyuan", "hunyuan-chunks", "ltx", "ltx-timestep", "ltx2"]


def _every_check(rank: int, world: int) -> dict[str, Any]:
    parts = {**{f: (_decode_rank, (f,)) for f in FAMILIES}, "pipeline": (_pipeline_rank, ())}
    return run_parts(rank, world, parts)


@pytest.fixture(scope="module")
def every_rank() -> list[dict[str, Any]]:
    return run_ranks(_every_check, timeout=TIMEOUT)


@pytest.mark.ranks
@pytest.mark.parametrize("family", FAMILIES)
def test_split_decode_equals_one_process_and_each_rank_decodes_its_tiles(every_rank, family):
    ranks = part(every_rank, family)
    chunks = 3 if family == "hunyuan-chunks" else 1  # each frame chunk is tiled alike
    owners = assign(AREAS, 2)
    assert ranks[0]["single"] == len(AREAS) * chunks == 12 * chunks, ranks
    for rank, r in enumerate(ranks):
        assert r["shape_ok"] and r["error"] < 1e-4, r
        assert r["calls"] == owners.count(rank) * chunks, (rank, r, owners)
    assert 0 < ranks[0]["calls"] < ranks[0]["single"]


@pytest.mark.ranks
def test_ltx_pipeline_end_to_end_splits_the_decode(every_rank):
    ranks = part(every_rank, "pipeline")
    single = ranks[0]["single"]
    assert single == 16, ranks
    assert [r["calls"] for r in ranks] == [single // 2] * 2, ranks
    for r in ranks:
        assert r["error"] < 1e-4, r


@pytest.mark.parametrize(
    "name", ["AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo", "AutoencoderKLLTX2Video", "AutoencoderKLWan"]
)
def test_video_vae_specs_are_registered(registry, name):
    import diffusers

    entry = registry.lookup(getattr(diffusers, name), kind=xcfg.VAESpec)
    assert entry is not None and isinstance(entry.spec, xcfg.VAESpec)
