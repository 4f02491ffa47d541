"""CPU offload with CFG parallelism on real GPUs (CI has no GPU; run it on a lent machine).

    torchrun --nproc-per-node 2 tests/gpu/check_offload.py

On each rank, the tiny CogVideoX example (fp32): the 1-process reference on this rank's GPU; then

1. offload first (``enable_model_cpu_offload(device=...)``, then ``parallelize``): what happens is recorded;
2. the recipe of docs/compatibility.md: ``parallelize`` on the rank's GPU, then
   ``enable_model_cpu_offload(device=device)``: equal to the reference within 1e-4, half of every batch
   computed, the transformer back on the CPU after the call, and this rank's GPU (not cuda:0) used.

Prints one line per check and exits non-zero on any failure. Runs on CPU ranks (gloo) as well, where the
GPU checks are skipped: that is how it was tried; it has not run on GPUs yet.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import xcfg
from xcfg.testing import BatchCounter, relative_error


def main() -> int:
    device = xcfg.init_distributed()
    rank = dist.get_rank()
    failures = 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"rank {rank} {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def fresh():
        run = xcfg.build_example("cogvideox", size="tiny", device=device, dtype=torch.float32)
        run.pipe.set_progress_bar_config(disable=True)
        kwargs = {**run.kwargs, "num_inference_steps": 2, "output_type": "pt"}
        return run.pipe, lambda: run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)).frames

    pipe, generate = fresh()
    reference = generate().cpu()

    pipe, generate = fresh()
    pipe.enable_model_cpu_offload(device=device)
    try:
        handle = xcfg.parallelize(pipe)
        error = relative_error(generate().cpu(), reference)
        handle.remove()
        print(f"rank {rank} INFO offload first: accepted, relative error {error:.2e}", flush=True)
    except xcfg.XcfgError as err:
        print(f"rank {rank} INFO offload first: refused: {str(err).splitlines()[0]}", flush=True)

    pipe, generate = fresh()
    handle = xcfg.parallelize(pipe)
    pipe.enable_model_cpu_offload(device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with BatchCounter(pipe.transformer) as counter:
        output = generate().cpu()
    error = relative_error(output, reference)
    check("recipe equals one process", error <= 1e-4, f"relative error {error:.2e}")
    check("recipe computes half of every batch", bool(counter.batches) and all(b == 1 for b in counter.batches),
          f"batches {counter.batches}")
    if cuda:
        where = next(pipe.transformer.parameters()).device
        check("transformer offloaded after the call", where.type == "cpu", f"on {where}")
        peak = torch.cuda.max_memory_allocated(device)
        check("this rank's GPU did the work", peak > 0, f"peak {peak / 2**20:.1f} MiB on {device}")
    handle.remove()
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
