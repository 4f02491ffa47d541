"""What the unet, ltx2, consisid and z_image examples alone would not show, on two real gloo ranks against one
process.

- The IP-Adapter's image embeddings (``added_cond_kwargs["image_embeds"]``, a list) reach the image
  projection split: batch 1 on each rank, and the embeddings change the image (the path is live).
- The ControlNet spec splits a bare ``ControlNetModel`` with SDXL conditioning: each rank computes
  batch 1, and the gathered residuals equal the whole model's; in the SDXL ControlNet pipeline the
  ControlNet computes batch 1 per rank too (the examples count the UNet only).
- LTX-2's audio stream is split with the video stream, and the audio output equals one process (the
  examples compare the video only); the STG and modality-isolation passes (batch 1) run whole.
- ConsisID's latents are split although its face conditions stay at batch 1: the example's batch
  counter sees the face extractor (batch 1) first, so the patch embedding is counted here.
- Z-Image's ControlNet pipeline: the ControlNet (no plugin names it) is inferred and split, and its block
  residuals, a dict at batch 2, reach the transformer split with the lists of per-sample latents.
"""

from __future__ import annotations

import pytest
import torch

import xcfg
from xcfg.testing import BatchCounter, relative_error, run_ranks


def _ip_adapter_rank(rank: int, world: int) -> dict:
    run = xcfg.build_example("sdxl-ip-adapter", size="tiny")
    kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
    projection = run.pipe.unet.encoder_hid_proj
    batches: list[int] = []
    handle_hook = projection.register_forward_pre_hook(lambda _m, args: batches.append(int(args[0][0].shape[0])))
    try:
        expected = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
        blank = {**kwargs, "ip_adapter_image_embeds": [torch.zeros_like(kwargs["ip_adapter_image_embeds"][0])]}
        without = run.pipe(**blank, generator=torch.Generator().manual_seed(7)).images
        single = list(batches)
        batches.clear()
        handle = xcfg.parallelize(run.pipe)
        try:
            actual = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
        finally:
            handle.remove()
    finally:
        handle_hook.remove()
    return {
        "error": relative_error(actual, expected),
        "effect": relative_error(without, expected),
        "single": single,
        "parallel": batches,
    }


@pytest.mark.ranks
def test_sdxl_ip_adapter_embeddings_are_split_and_live():
    for result in run_ranks(_ip_adapter_rank, timeout=240):
        assert result["error"] < 1e-4, result
        assert result["effect"] > 1e-3, result  # the image embeddings change the image: the IP path runs
        assert result["single"] == [2, 2, 2, 2], result  # two pipeline calls of 2 steps at batch 2
        assert result["parallel"] == [1, 1], result


def _controlnet_rank(rank: int, world: int) -> dict:
    run = xcfg.build_example("sdxl-controlnet", size="tiny")
    controlnet = run.pipe.controlnet
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
        controlnet_cond=torch.rand(2, 3, 16, 16, generator=g),
        conditioning_scale=0.8,
        added_cond_kwargs={"text_embeds": torch.randn(2, 8, generator=g), "time_ids": torch.rand(2, 6, generator=g) * 16},
        return_dict=False,
    )
    sample, timestep = torch.randn(2, 4, 8, 8, generator=g), torch.tensor(500.0)
    down, mid = controlnet(sample, timestep, **inputs)
    handle = xcfg.parallelize(controlnet)
    try:
        with BatchCounter(controlnet) as counter:
            down_split, mid_split = controlnet(sample, timestep, **inputs)
    finally:
        handle.remove()
    # in the pipeline, parallelize wraps the ControlNet beside the UNet: both compute half the batch
    kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
    with BatchCounter(controlnet) as whole:
        expected = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
    handle = xcfg.parallelize(run.pipe)
    try:
        with BatchCounter(controlnet) as split:
            actual = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
    finally:
        handle.remove()
    return {
        "errors": [relative_error(a, b) for a, b in zip((*down_split, mid_split), (*down, mid))],
        "shapes": [tuple(t.shape) for t in (*down_split, mid_split)],
        "norm": float(mid.norm()),
        "batches": counter.batches,
        "pipeline_error": relative_error(actual, expected),
        "pipeline_batches": (whole.batches, split.batches),
    }


@pytest.mark.ranks
def test_controlnet_spec_splits_the_controlnet_alone_and_in_the_pipeline():
    for result in run_ranks(_controlnet_rank, timeout=180):
        assert result["batches"] == [1], result
        assert result["norm"] > 0, result  # the example randomizes the zero-initialized output convolutions
        assert all(shape[0] == 2 for shape in result["shapes"]), result  # every residual gathered back to 2
        assert all(e < 1e-5 for e in result["errors"]), result
        assert result["pipeline_error"] < 1e-4, result
        assert result["pipeline_batches"] == ([2, 2], [1, 1]), result


def _ltx2_audio_rank(rank: int, world: int) -> dict:
    run = xcfg.build_example("ltx2", size="tiny")
    kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
    audio_in = run.pipe.transformer.audio_proj_in
    batches: list[int] = []
    hook = audio_in.register_forward_pre_hook(lambda _m, args: batches.append(int(args[0].shape[0])))
    try:
        expected = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7))
        single = list(batches)
        batches.clear()
        handle = xcfg.parallelize(run.pipe)
        try:
            actual = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7))
        finally:
            handle.remove()
    finally:
        hook.remove()
    return {
        "video": relative_error(actual.frames, expected.frames),
        "audio": relative_error(actual.audio, expected.audio),
        "single": single,
        "parallel": batches,
    }


@pytest.mark.ranks
def test_ltx2_audio_stream_is_split_and_equal():
    for result in run_ranks(_ltx2_audio_rank, timeout=240):
        assert result["video"] < 1e-4 and result["audio"] < 1e-4, result
        # per step: the CFG call (2), then STG and modality isolation (1 each, whole on every rank)
        assert result["single"] == [2, 1, 1, 2, 1, 1], result
        assert result["parallel"] == [1, 1, 1, 1, 1, 1], result


def _consisid_rank(rank: int, world: int) -> dict:
    run = xcfg.build_example("consisid", size="tiny")
    kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
    batches: list[int] = []
    hook = run.pipe.transformer.patch_embed.register_forward_pre_hook(
        lambda _m, args: batches.append(int(args[1].shape[0]))  # (text embeddings, latents)
    )
    try:
        expected = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames
        single = list(batches)
        batches.clear()
        handle = xcfg.parallelize(run.pipe)
        try:
            actual = run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames
        finally:
            handle.remove()
    finally:
        hook.remove()
    return {"error": relative_error(actual, expected), "single": single, "parallel": batches}


@pytest.mark.ranks
def test_consisid_latents_are_split_while_the_face_conditions_broadcast():
    for result in run_ranks(_consisid_rank, timeout=240):
        assert result["error"] < 1e-4, result
        assert result["single"] == [2, 2] and result["parallel"] == [1, 1], result


def _z_image_controlnet_rank(rank: int, world: int) -> dict:
    from diffusers import ZImageControlNetPipeline
    from diffusers.models.controlnets.controlnet_z_image import ZImageControlNetModel

    from xcfg_plugins import _common

    run = xcfg.build_example("z-image", size="tiny")
    torch.manual_seed(3)
    controlnet = ZImageControlNetModel(
        control_layers_places=[0], control_in_dim=4, all_patch_size=(2,), all_f_patch_size=(1,), dim=32,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2,
    ).eval()
    _common.randomize_zero_weights(controlnet, 3)  # its zero-initialized projections would hide the residuals
    parts = run.pipe.components
    pipe = ZImageControlNetPipeline(
        scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=None, tokenizer=None,
        transformer=parts["transformer"], controlnet=controlnet,
    )
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kwargs = {**run.kwargs, "control_image": image, "output_type": "pt"}

    def call() -> tuple:
        with BatchCounter(pipe.transformer) as transformer, BatchCounter(pipe.controlnet) as control:
            out = pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
        return out, transformer.batches, control.batches

    expected, single, single_control = call()
    without = pipe(**{**kwargs, "controlnet_conditioning_scale": 0.0}, generator=torch.Generator().manual_seed(7)).images
    handle = xcfg.parallelize(pipe)
    actual, parallel, parallel_control = call()
    return {"error": relative_error(actual, expected), "live": relative_error(without, expected),
            "single": single, "parallel": parallel, "single_control": single_control,
            "parallel_control": parallel_control, "inferred": sorted(handle.inferred)}


@pytest.mark.ranks
def test_z_image_controlnet_residuals_are_split_with_the_per_sample_lists():
    for result in run_ranks(_z_image_controlnet_rank, timeout=240):
        assert result["error"] < 1e-4 and result["live"] > 1e-3, result  # equal, and the residuals matter
        assert result["single"] == [2, 2, 2] and result["parallel"] == [1, 1, 1], result
        # the ControlNet: its first split call is verified against the whole call, then batch 1 per rank
        assert result["single_control"] == [2, 2, 2] and result["parallel_control"] == [2, 1, 1], result
        assert result["inferred"] == ["controlnet"], result
