"""Where xcfg's per-step overhead goes, on a small fast model (SD3-medium by default): a diagnostic.

Run under torchrun on 2 GPUs (or 2 CPU ranks with --cpu). It times the control-plane exchange alone,
then the pipeline's median step with: one GPU; the seed-style wrapper; xcfg; xcfg with its per-call
control exchange removed. The differences attribute the cost.

    torchrun --nproc-per-node 2 benchmarks/overhead.py [--example sd3] [--steps 20] [--cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _median_step(pipe: Any, kwargs: dict[str, Any], steps: int, cuda: bool) -> float:
    marks: list[Any] = []

    def mark() -> Any:
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_step_end(_p: Any, _i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        marks.append(mark())
        return {}

    pipe(**kwargs, num_inference_steps=2, output_type="latent")  # warm-up
    pipe(**kwargs, num_inference_steps=steps, output_type="latent", callback_on_step_end=on_step_end)
    if cuda:
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
    else:
        times = [b - a for a, b in zip(marks, marks[1:])]
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--example", default="sd3")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()

    import xcfg

    import _seed_wrapper

    device = xcfg.init_distributed()
    rank = dist.get_rank()
    say = print if rank == 0 else (lambda *a, **k: None)
    cuda = device.type == "cuda"

    group = xcfg.CFGGroup.create(2)
    for label, fn in (("control exchange (gloo)", lambda: group.exchange([1, 2, 3, 4, 5, 6], "bench")),):
        for _ in range(50):
            fn()
        times = []
        for _ in range(300):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        say(f"overhead: {label}: median {statistics.median(times) * 1e6:.0f} us, p90 "
            f"{sorted(times)[int(0.9 * len(times))] * 1e6:.0f} us")

    run = xcfg.build_example(args.example, size="tiny" if args.cpu else "full", device=device)
    pipe, kwargs = run.pipe, dict(run.kwargs)
    kwargs.pop("num_inference_steps", None)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    pipe.set_progress_bar_config(disable=True)

    results: dict[str, float] = {}
    results["1 GPU"] = _median_step(pipe, kwargs, args.steps, cuda)
    remove = _seed_wrapper.install(pipe.transformer)
    results["seed wrapper"] = _median_step(pipe, kwargs, args.steps, cuda)
    remove()

    import xcfg._wrapper as wrapper

    def bare(session, group, layouts, key, value, compute, collect):  # the same call without the control plane
        output = compute()
        return output if collect is None else collect(output)[0]

    for label, controlled in (("xcfg", wrapper._controlled), ("xcfg without the control plane", bare)):
        saved, wrapper._controlled = wrapper._controlled, controlled
        try:
            handle = xcfg.parallelize(pipe)
            results[label] = _median_step(pipe, kwargs, args.steps, cuda)
            handle.remove()
        finally:
            wrapper._controlled = saved
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    for label, value in results.items():
        say(f"overhead: {args.example} {label}: {value * 1000:.2f} ms/step ({card})")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
