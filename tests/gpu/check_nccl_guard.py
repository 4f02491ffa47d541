"""Guarded data collectives on real GPUs with NCCL (CI has no GPU; run it on a lent machine).

    torchrun --nproc-per-node 2 tests/gpu/check_nccl_guard.py

On each rank: the tiny CogVideoX example on this rank's GPU with a tiled VAE decode, parallelized; then
``CFGGroup.all_gather`` raises on rank 1 at the gather of the first denoiser call, of a later call and of
the VAE tiles (as an out-of-memory allocating the gathered buffer would). Rank 1 stands in for the NCCL
collective with zeros; rank 0 must raise RankFailedError naming rank 1's error and rank 1 its own error,
both within seconds, and the next pipeline call must equal the one before the faults. Prints one line
per check and exits non-zero on any failure. Works on CPU ranks (gloo) as well.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist

import xcfg
from xcfg._group import CFGGroup
from xcfg.testing import relative_error


def main() -> int:
    device = xcfg.init_distributed()
    rank = dist.get_rank()
    run = xcfg.build_example("cogvideox", size="tiny", device=device)
    pipe = run.pipe
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling(24, 24, 1 / 3, 1 / 3)
    kwargs = {**run.kwargs, "output_type": "pt", "num_inference_steps": 3}

    def call() -> torch.Tensor:
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames

    handle = xcfg.parallelize(pipe)
    expected = call()
    real = CFGGroup.all_gather
    checks: list[tuple[str, bool, str]] = []
    for label, nth in (("gather of the first call", 1), ("gather of a later call", 3), ("VAE tile gather", 4)):
        seen = [0]

        def all_gather(group: CFGGroup, tensor: torch.Tensor) -> torch.Tensor:
            seen[0] += 1
            if rank == 1 and seen[0] == nth:
                raise torch.OutOfMemoryError("CUDA out of memory allocating the gathered buffer (injected)")
            return real(group, tensor)

        CFGGroup.all_gather = all_gather
        start = time.monotonic()
        try:
            call()
            outcome = "no error"
        except Exception as err:  # noqa: BLE001 - what each rank raised is the result
            outcome = f"{type(err).__name__}: {err}"
        finally:
            CFGGroup.all_gather = real
        seconds = time.monotonic() - start
        want = "RankFailedError" if rank == 0 else "OutOfMemoryError"
        ok = outcome.startswith(want) and "(injected)" in outcome and seconds < 30
        checks.append((label, ok, f"{outcome.splitlines()[0][:140]} ({seconds:.2f} s)"))
    error = relative_error(call(), expected)
    checks.append(("works afterwards", error == 0.0, f"relative error {error:.1e}"))
    handle.remove()

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    failed = 0
    for label, ok, detail in checks:
        failed += not ok
        print(f"check_nccl_guard rank {rank} ({dist.get_backend()}, {card}): {'ok  ' if ok else 'FAIL'} {label}: "
              f"{detail}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
