"""The ceiling of CFG parallelism per model, on one GPU: a step with CFG on over the same step with CFG off.

A CFG split can at best turn a step with CFG into a step without it, so this ratio is the best speedup 2 GPUs
can give that model. One process, one GPU, no process group::

    python benchmarks/ceiling.py sdxl sd15 --out my-results       # full-size examples, random bf16 weights

Per example, in a process of its own (a CUDA device-side assert in one model would poison the others): build the
``"full"`` config on the GPU in bf16 (random weights; weights a constructor leaves at zero get random values), run
a warm-up call, then time ``--steps`` steps with CFG on and with CFG off, each step between CUDA events recorded at
each step's end (no synchronize per step). ``--timeout`` bounds each example. Writes ``ceiling.json`` and prints a
table: the median step time with CFG on and off, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def cfg_off(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same call with CFG off: guidance 1 (and true CFG 1), so the pipeline evaluates the cond branch only."""
    off = dict(kwargs)
    for name in ("guidance_scale", "true_cfg_scale", "guidance_scale_2"):
        if name in off:
            off[name] = 1.0
    return off


def time_steps(pipe: Any, kwargs: dict[str, Any], steps: int) -> list[float]:
    """Seconds per step of one call: intervals between CUDA events recorded at each step's end."""
    events: list[torch.cuda.Event] = []

    def mark() -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        events.append(event)

    from _worker import step_callback

    call = dict(kwargs, num_inference_steps=steps, output_type="latent")
    with step_callback(pipe, lambda _latents: mark()) as extra:
        mark()
        pipe(**call, **extra, generator=torch.Generator("cuda").manual_seed(0))
    torch.cuda.synchronize()
    return [a.elapsed_time(b) / 1000 for a, b in zip(events, events[1:])]


def measure(name: str, steps: int, warmup: int = 2) -> dict[str, Any]:
    import xcfg
    from _worker import _randomize_zero_weights

    start = time.monotonic()
    run = xcfg.build_example(name, size="full", device="cuda", dtype=torch.bfloat16)
    _randomize_zero_weights(run.pipe, 0)
    result: dict[str, Any] = {"example": name, "description": run.description}
    guider = getattr(run.pipe, "guider", None)
    for label, kwargs in (("cfg_on", run.kwargs), ("cfg_off", cfg_off(run.kwargs))):
        if label == "cfg_off" and guider is not None and hasattr(guider, "guidance_scale"):
            run.pipe.guider = guider.new(guidance_scale=1.0)  # CFG through a guider (HunyuanVideo 1.5): off there
        time_steps(run.pipe, kwargs, warmup)
        intervals = time_steps(run.pipe, kwargs, steps)
        result[label] = {"step_median_s": statistics.median(intervals[1:] or intervals), "intervals": intervals}
    result["ceiling"] = result["cfg_on"]["step_median_s"] / result["cfg_off"]["step_median_s"]
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["seconds"] = time.monotonic() - start
    del run
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


ROW = "ceiling-row: "


def _isolated(name: str, steps: int, warmup: int, timeout: float) -> dict[str, Any]:
    """``measure(name)`` in a fresh process: its row, or the error, the exit status or the timeout."""
    command = [sys.executable, __file__, name, "--one", "--steps", str(steps), "--warmup", str(warmup)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row = {"example": name, "error": f"timed out after {timeout:.0f} s"}
    else:
        found = [line[len(ROW):] for line in done.stdout.splitlines() if line.startswith(ROW)]
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        row = json.loads(found[-1]) if found else {"example": name, "error": f"exit {done.returncode}: {' / '.join(tail)}"[:500]}
    print(json.dumps({k: v for k, v in row.items() if k not in ("cfg_on", "cfg_off")}), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("examples", nargs="+", help="example names with a 'full' size")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps of the warm-up call before each timed one")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each example (default 300)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the per-example process
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    from _worker import ensure_examples

    ensure_examples(args.examples)
    card = torch.cuda.get_device_name(0)
    if args.one:
        try:
            row = measure(args.examples[0], args.steps, args.warmup)
        except Exception as err:
            row = {"example": args.examples[0], "error": f"{type(err).__name__}: {err}"[:500]}
        print(ROW + json.dumps(row), flush=True)
        return 0
    rows = [_isolated(name, args.steps, args.warmup, args.timeout) for name in args.examples]
    import diffusers

    meta = {"card": card, "torch": torch.__version__, "diffusers": diffusers.__version__, "steps": args.steps,
            "warmup": args.warmup}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps({"meta": meta, "models": rows}, indent=1) + "\n")
    print(f"\n{card}; torch {torch.__version__}, diffusers {diffusers.__version__}\n")
    print("| model | CFG on s/step | CFG off s/step | ceiling |\n|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['example']} | failed: {row['error'][:80]} | | |")
        else:
            print(f"| {row['description']} | {row['cfg_on']['step_median_s']:.4g} | {row['cfg_off']['step_median_s']:.4g} "
                  f"| {row['ceiling']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
