"""What works together with ``xcfg.parallelize``: every row of docs/compatibility.md that says "tested (CPU)"
is one test here.

Each test runs a tiny CogVideoX (configs, random weights, random prompt embeddings: no download) on 2 real
gloo ranks. On every rank it first computes the 1-process reference, then parallelizes and checks that the
output equals the reference within 1e-4 (fp32) and that the rank's transformer computed half of every batch.
"""

from __future__ import annotations

import pytest

from xcfg.testing import run_ranks

TIMEOUT = 240
TOLERANCE = 1e-4
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

pytestmark = [pytest.mark.ranks, pytest.mark.timeout(TIMEOUT + 60)]


def _tiny():
    import torch

    import xcfg

    run = xcfg.build_example("cogvideox", size="tiny")
    run.pipe.set_progress_bar_config(disable=True)
    kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}

    def generate():
        return run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames

    return run.pipe, generate


def _measured(pipe, generate, reference):
    """The output's relative error against ``reference`` and the batches this rank's transformer computed."""
    from xcfg.testing import BatchCounter, relative_error

    with BatchCounter(pipe.transformer) as counter:
        output = generate()
    return relative_error(output, reference), counter.batches


def _save_random_lora(pipe, folder: str) -> str:
    """A LoRA for the transformer's attention projections, random and the same on every rank (seeded), saved
    with diffusers' own ``save_lora_weights`` so that ``load_lora_weights`` reads it as it reads any file."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS, init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="random")
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="random")
    pipe.transformer.delete_adapters("random")
    type(pipe).save_lora_weights(folder, transformer_lora_layers=layers)
    return folder


def _lora_rank(rank: int, world_size: int, folder: str) -> dict:
    import os

    import xcfg

    pipe, generate = _tiny()
    lora = _save_random_lora(pipe, os.path.join(folder, f"rank{rank}"))
    pipe.load_lora_weights(lora, adapter_name="style")
    with_lora = generate()
    pipe.unload_lora_weights()
    plain = generate()
    handle = xcfg.parallelize(pipe)
    found = {}
    pipe.load_lora_weights(lora, adapter_name="style")
    found["load"] = _measured(pipe, generate, with_lora)
    pipe.fuse_lora()
    found["fuse"] = _measured(pipe, generate, with_lora)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    found["unload"] = _measured(pipe, generate, plain)
    handle.remove()
    found["lora_changed_the_output"] = float((with_lora - plain).abs().max())
    return found


def _offload_rank(rank: int, world_size: int, kind: str) -> dict:
    import xcfg

    device = xcfg.init_distributed()  # cpu here; cuda:LOCAL_RANK on GPUs
    pipe, generate = _tiny()
    reference = generate()
    handle = xcfg.parallelize(pipe)  # first: parallelize checks the models' devices against the rank's
    assert kind == "model"
    pipe.enable_model_cpu_offload(device=device)
    found = {"offloaded": _measured(pipe, generate, reference), "hooked": hasattr(pipe.transformer, "_hf_hook")}
    handle.remove()
    pipe.remove_all_hooks()
    found["device"] = str(device)
    return found


def _torchao_rank(rank: int, world_size: int) -> dict:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    import xcfg

    pipe, generate = _tiny()
    quantize_(pipe.transformer, Int8WeightOnlyConfig())
    kind = type(pipe.transformer.transformer_blocks[0].attn1.to_q.weight).__name__
    reference = generate()
    handle = xcfg.parallelize(pipe)
    found = {"quantized": _measured(pipe, generate, reference), "weight": kind}
    handle.remove()
    return found


def _halved(batches: list[int]) -> bool:
    return bool(batches) and all(b == 1 for b in batches)  # tiny CogVideoX: [uncond, cond] = 2, one each


def test_lora_load_fuse_unfuse_unload_after_parallelize(tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[test]'")
    results = run_ranks(_lora_rank, str(tmp_path), world_size=2, timeout=TIMEOUT)
    for rank, found in enumerate(results):
        assert found["lora_changed_the_output"] > 1e-3, "the random LoRA must change the output to prove anything"
        for stage in ("load", "fuse", "unload"):
            error, batches = found[stage]
            assert error <= TOLERANCE, f"rank {rank}, {stage}: relative error {error:.2e}"
            assert _halved(batches), f"rank {rank}, {stage}: computed batches {batches}, not half of each"


def test_model_cpu_offload_after_parallelize():
    """The recipe: ``parallelize`` first, then ``enable_model_cpu_offload(device=...)`` with the rank's device.
    (Sequential offload is not tested here: diffusers' ``enable_sequential_cpu_offload`` fails on a CPU
    device with or without xcfg, so it needs a GPU run.)"""
    pytest.importorskip("accelerate", reason="diffusers' CPU offload needs accelerate: pip install -e '.[test]'")
    results = run_ranks(_offload_rank, "model", world_size=2, timeout=TIMEOUT)
    for rank, found in enumerate(results):
        assert found["hooked"], "enable_model_cpu_offload installed no offload hook"
        error, batches = found["offloaded"]
        assert error <= TOLERANCE, f"rank {rank}: relative error {error:.2e}"
        assert _halved(batches), f"rank {rank}: computed batches {batches}"


def test_torchao_int8_weights_parallelize():
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")
    results = run_ranks(_torchao_rank, world_size=2, timeout=TIMEOUT)
    for rank, found in enumerate(results):
        assert found["weight"] != "Parameter", "the weights were not quantized"
        error, batches = found["quantized"]
        assert error <= TOLERANCE, f"rank {rank}: relative error {error:.2e}"
        assert _halved(batches), f"rank {rank}: computed batches {batches}"
