"""The built-in plugins for the remaining batched-CFG models: LTX-Video, PixArt-α/Σ, Sana, Allegro, HunyuanDiT.

Each example runs on two gloo ranks against one process: equal within 1e-4, and every rank computed
batch 1 of each batch-2 call. Plus what the examples alone would not show: HunyuanDiT's rotary
embedding reaches every rank whole, and Sana-Sprint's per-sample ``guidance`` is split with the batch.
And the PAG pipelines, whose batch mixes inside the model, run whole on every rank and stay equal.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import xcfg
from xcfg.testing import check_example, relative_error, run_ranks

pytestmark = pytest.mark.ranks

MODULES = ["ltx", "pixart", "sana", "allegro", "hunyuan_dit"]
EXAMPLES = ["ltx", "ltx-i2v", "ltx-condition", "pixart-alpha", "pixart-sigma", "sana", "allegro", "hunyuan-dit"]

# forward arguments that every sample shares: listing one as a batch input would split it or raise
SHARED = {
    "LTXVideoTransformer3DModel": {"num_frames", "height", "width", "rope_interpolation_scale", "attention_kwargs"},
    "PixArtTransformer2DModel": {"cross_attention_kwargs"},
    "SanaTransformer2DModel": {"attention_kwargs"},
    "AllegroTransformer3DModel": {"image_rotary_emb"},
    "HunyuanDiT2DModel": {"image_rotary_emb"},
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_equals_one_process_and_halves_the_batch(name):
    report = check_example(name, timeout=240)
    assert all(e < 1e-4 for e in report.errors), report
    steps = len(report.single_batches)
    assert steps > 0 and report.single_batches == [2] * steps, report
    assert report.parallel_batches == [[1] * steps, [1] * steps], report


@pytest.mark.parametrize("module_name", MODULES)
def test_plugin_module_parts_and_specs(module_name, registry):
    module = importlib.import_module(f"xcfg_plugins.{module_name}")
    assert module.__doc__ and "batch" in module.__doc__
    assert "tiny" in module.CONFIGS and callable(module.build)
    assert module.EXAMPLES and not any(example.default for example in module.EXAMPLES)
    assert module_name in registry.plugin_names()
    for spec in module.SPECS:
        cls = spec.resolve()
        params = inspect.signature(cls.forward).parameters
        assert {item.name for item in spec.batch_inputs} <= set(params), spec  # every batch input is an argument
        assert registry.lookup(cls).plugin == module_name
        assert not SHARED[cls.__name__] & {item.name for item in spec.batch_inputs}


def test_pixart_declares_the_size_conditioning_entries():
    from xcfg_plugins.pixart import SPECS

    keys = {item.key for item in SPECS[0].batch_inputs if item.name == "added_cond_kwargs"}
    assert keys == {"resolution", "aspect_ratio"}


def _hunyuan_rope_rank(rank: int, world: int) -> dict:
    run = xcfg.build_example("hunyuan-dit", size="tiny")
    transformer = run.pipe.transformer
    given, reached = [], []

    def at_model(_module, args, kwargs):
        given.append(kwargs["image_rotary_emb"])

    def at_block(_module, args, kwargs):
        reached.append((args[0].shape[0], kwargs["image_rotary_emb"]))

    handles = [
        transformer.register_forward_pre_hook(at_model, with_kwargs=True),
        transformer.blocks[0].register_forward_pre_hook(at_block, with_kwargs=True),
    ]
    handle = xcfg.parallelize(run.pipe)
    try:
        kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
        run.pipe(**kwargs, generator=torch.Generator().manual_seed(3))
    finally:
        handle.remove()
        for h in handles:
            h.remove()
    calls = []
    for rope, (batch, block_rope) in zip(given, reached):
        calls.append({
            "batch": batch,
            "type": type(block_rope).__name__,
            "shapes": [tuple(t.shape) for t in block_rope],
            "full_shapes": [tuple(t.shape) for t in rope],
            "equal": all(torch.equal(a, b) for a, b in zip(block_rope, rope)),
        })
    return {"calls": calls}


def test_hunyuan_dit_rotary_embedding_reaches_every_rank_whole():
    for result in run_ranks(_hunyuan_rope_rank, timeout=240):
        calls = result["calls"]
        assert len(calls) == 2, calls
        for call in calls:
            assert call["batch"] == 1, call  # the batch inputs were split ...
            assert call["type"] == "tuple" and len(call["shapes"]) == 2, call  # ... the (cos, sin) pair was not
            assert call["shapes"] == call["full_shapes"] and call["equal"], call
            assert call["shapes"][0][0] == 16, call  # 16 tokens (8x8 latents, patch 2), no batch dimension


def _sana_sprint_rank(rank: int, world: int) -> dict:
    from diffusers import SanaTransformer2DModel

    from xcfg.testing import BatchCounter

    config = dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=8, guidance_embeds=True,
    )
    torch.manual_seed(0)
    reference = SanaTransformer2DModel(**config)
    model = SanaTransformer2DModel(**config)
    model.load_state_dict(reference.state_dict())
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        encoder_hidden_states=torch.randn(2, 6, 8, generator=g),
        timestep=torch.tensor([0.3, 0.7]),
        guidance=torch.tensor([0.45, 0.9]),  # Sana-Sprint: per sample, like the timestep
        encoder_attention_mask=torch.ones(2, 6),
        return_dict=False,
    )
    latents = torch.randn(2, 4, 8, 8, generator=g)
    expected = reference(latents, **inputs)[0]
    handle = xcfg.parallelize(model)
    with BatchCounter(model) as counter:
        actual = model(latents, **inputs)[0]
    handle.remove()
    return {"error": relative_error(actual, expected), "batches": counter.batches}


def test_sana_guidance_is_split_with_the_batch():
    for result in run_ranks(_sana_sprint_rank, timeout=120):
        assert result["batches"] == [1], result
        assert result["error"] < 1e-5, result


def _pixart_pag_rank(rank: int, world: int) -> dict:
    from diffusers import PixArtSigmaPAGPipeline

    from xcfg_plugins import pixart

    run = pixart.build(variant="sigma")
    base = run.pipe
    pipe = PixArtSigmaPAGPipeline(
        tokenizer=None, text_encoder=None, vae=base.vae, transformer=base.transformer, scheduler=base.scheduler,
        pag_applied_layers=["transformer_blocks.1"],
    )
    results = {}
    for label, prompts, guidance in (("pag_only_batch_2", 1, 1.0), ("pag_cfg_batch_6", 2, 4.5)):
        kwargs = {**run.kwargs, "output_type": "pt", "pag_scale": 3.0, "guidance_scale": guidance}
        kwargs["num_inference_steps"] = 2
        for key in ("prompt_embeds", "negative_prompt_embeds", "prompt_attention_mask",
                    "negative_prompt_attention_mask"):
            kwargs[key] = kwargs[key].repeat(prompts, *[1] * (kwargs[key].dim() - 1))
        kwargs["prompt_embeds"] = kwargs["prompt_embeds"] + torch.arange(prompts).view(-1, 1, 1)  # distinct prompts
        expected = pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
        handle = xcfg.parallelize(pipe)
        try:
            actual = pipe(**kwargs, generator=torch.Generator().manual_seed(7)).images
            results[label] = relative_error(actual, expected)
        except Exception as err:  # noqa: BLE001 - reported to the test
            results[label] = repr(err)
        finally:
            handle.remove()
    return results


@pytest.mark.filterwarnings("ignore:xcfg. perturbed-attention guidance")
def test_pixart_sigma_pag_runs_whole_and_equals_one_process():
    """PAG batches [uncond, cond, perturbed] and splits it inside the model: xcfg must not split it."""
    for result in run_ranks(_pixart_pag_rank, timeout=240):
        assert all(isinstance(e, float) and e < 1e-4 for e in result.values()), result
