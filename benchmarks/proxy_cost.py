"""The cost of a call through ``xcfg.launch``'s proxy, against a direct call on the same workers.

    python benchmarks/proxy_cost.py --cpu                    # 2 gloo CPU workers, tiny CogVideoX
    python benchmarks/proxy_cost.py                          # 2 GPUs, tiny CogVideoX
    python benchmarks/proxy_cost.py --size full --steps 2    # 2 GPUs, full-size CogVideoX-5B config

One pool is started and kept. Each round, in turn (so that a drift of the machine hits both alike):

- **direct**: the pipeline called inside the workers, every rank at once, timed on rank 0 from the call to
  its return: what a torchrun script's call costs (``run_on_workers`` carries the timing function);
- **proxy**: the same call made on the proxy, timed in the calling process from the call to the unpickled
  result: the arguments pickled and sent, the call, rank 0's result sent back;
- **round trip**: an empty ``run_on_workers``: the messaging alone, with nothing computed or carried.

The cost of the proxy is ``proxy - direct`` (medians), which includes carrying the output back; the output's
size and the round trip say how much of it is transfer and how much is the fixed cost. Prints a table and,
with ``--out``, writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's xcfg, and this file as a module the workers import

import xcfg  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_pipe(example: str, size: str) -> Any:
    """The factory (run in each worker, through ``functools.partial``)."""
    device = xcfg.init_distributed()
    return xcfg.build_example(example, size=size, device=device).pipe


def time_direct(pipe: Any, kwargs: dict[str, Any], seed: int) -> float:
    """Run in every worker: one pipeline call with a generator made here; seconds from the call to its end."""
    device = pipe.transformer.device
    generator = torch.Generator("cpu").manual_seed(seed)
    _sync(device)
    start = time.perf_counter()
    pipe(**kwargs, generator=generator)
    _sync(device)
    return time.perf_counter() - start


def nothing(pipe: Any) -> None:
    """Run in every worker: nothing (the messaging alone)."""


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import functools

    device = "cpu" if args.cpu else "cuda"
    started = time.perf_counter()
    pipe = xcfg.launch(functools.partial(make_pipe, args.example, args.size), nproc=args.nproc, device=device,
                       start_method=args.start_method, timeout=args.timeout)
    start_s = time.perf_counter() - started
    try:
        pipe.set_progress_bar_config(disable=True)
        kwargs = dict(xcfg.build_example(args.example, size=args.size, device="cpu").kwargs)
        kwargs.update(num_inference_steps=args.steps, output_type=args.output_type)
        result = pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up, both paths
        pipe.run_on_workers(time_direct, kwargs, 0)
        direct, proxy, round_trip = [], [], []
        for i in range(args.repeats):
            direct.append(pipe.run_on_workers(time_direct, kwargs, i)[0])
            start = time.perf_counter()
            result = pipe(**kwargs, generator=torch.Generator().manual_seed(i))
            proxy.append(time.perf_counter() - start)
            start = time.perf_counter()
            pipe.run_on_workers(nothing)
            round_trip.append(time.perf_counter() - start)
    finally:
        pipe.close()
    median = statistics.median
    return {
        "example": args.example,
        "size": args.size,
        "device": device,
        "nproc": args.nproc,
        "steps": args.steps,
        "output_type": args.output_type,
        "repeats": args.repeats,
        "start_method": args.start_method,
        "pool_start_s": start_s,
        "direct_s": direct,
        "proxy_s": proxy,
        "round_trip_s": round_trip,
        "direct_median_s": median(direct),
        "proxy_median_s": median(proxy),
        "cost_median_s": median(proxy) - median(direct),
        "direct_min_s": min(direct),
        "proxy_min_s": min(proxy),
        "cost_min_s": min(proxy) - min(direct),
        "round_trip_median_s": median(round_trip),
        "argument_bytes": len(pickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)),
        "output_bytes": len(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)),
        "environment": {
            "torch": torch.__version__, "xcfg": xcfg.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def table(r: dict[str, Any]) -> str:
    ms = 1000.0
    return "\n".join([
        f"proxy cost, {r['example']} {r['size']} on {r['nproc']} {r['device']} workers, {r['steps']} steps, "
        f"output_type={r['output_type']}, {r['repeats']} rounds",
        "| statistic | direct call | proxy call | proxy cost | empty round trip | output | arguments |",
        "|---|---|---|---|---|---|---|",
        *(f"| {stat} | {r[f'direct_{stat}_s'] * ms:.1f} ms | {r[f'proxy_{stat}_s'] * ms:.1f} ms "
          f"| {r[f'cost_{stat}_s'] * ms:+.1f} ms | {r['round_trip_median_s'] * ms:.2f} ms (median) "
          f"| {r['output_bytes'] / 1e6:.2f} MB | {r['argument_bytes'] / 1e3:.1f} kB |" for stat in ("median", "min")),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/proxy_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="2 gloo CPU workers (default: 2 GPUs)")
    p.add_argument("--nproc", type=int, default=2, help="workers (default: 2)")
    p.add_argument("--example", default="cogvideox", help="registered example (default: cogvideox)")
    p.add_argument("--size", default="tiny", choices=("tiny", "full"))
    p.add_argument("--steps", type=int, default=2, help="steps per call (default: 2)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (default: 20)")
    p.add_argument("--output-type", default="pt", help="the pipeline's output_type (default: pt)")
    p.add_argument("--start-method", default="spawn", choices=("spawn", "forkserver"))
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", help="write the numbers as JSON to this file")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no GPU here: pass --cpu")
    result = measure(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
