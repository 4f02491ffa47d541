"""The ``xcfg`` command: run a pipeline with CFG parallelism on N local ranks and compare with 1 rank.

``xcfg run`` (or plain ``xcfg``) launches itself under ``torchrun`` when it is not already running
there, so the same command works on a laptop CPU and on a GPU box. Every rank first runs the plain
pipeline (the 1-rank baseline), then the parallelized one; rank 0 prints both per-step times, whether
the outputs agree, and writes the output file.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_PROMPT = "a panda playing a guitar in a bamboo forest, cinematic lighting"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xcfg",
        description="Run a diffusers pipeline with its CFG batch split across N local ranks, and compare with 1 rank.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a pipeline on 1 rank and on N ranks (the default command)")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--example", help="a registered example built from configs with random weights "
                        "(default: the default example; see `xcfg list`)")
    source.add_argument("--model", help="a local diffusers pipeline folder or a cached hub id, loaded with "
                        "DiffusionPipeline.from_pretrained (real weights, real text encoders)")
    run.add_argument("--size", choices=["tiny", "small", "full"],
                     help="example size: tiny (tests), small (CPU demo), full (published size, GPU); "
                     "default: small where the example has it, else tiny")
    run.add_argument("--nproc", type=int, default=2, help="ranks to launch when not under torchrun (default: 2)")
    run.add_argument("--steps", type=int, help="denoising steps (default: the example's, or 30 for --model)")
    run.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt for --model")
    run.add_argument("--negative-prompt", default="", help="negative prompt for --model")
    run.add_argument("--guidance-scale", type=float, help="CFG scale (default: the example's or the pipeline's)")
    run.add_argument("--height", type=int)
    run.add_argument("--width", type=int)
    run.add_argument("--frames", type=int, help="frames, for video pipelines")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="xcfg-out", help="folder for the output file and report (default: xcfg-out)")
    run.add_argument("--no-baseline", action="store_true", help="skip the 1-rank run")
    sub.add_parser("list", help="list the registered examples and supported models")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xcfg`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in {"-h", "--help"}:
        argv = ["run", *argv]
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    if "RANK" not in os.environ and args.nproc > 1:
        return _launch(args.nproc, _without_nproc(argv))
    return _run(args)


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N``: under torchrun the rank count comes from torchrun itself."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _list() -> int:
    import xcfg

    registry = xcfg.default_registry()
    print("examples (xcfg run --example NAME):")
    for example in registry.examples():
        mark = " (default)" if example.default else ""
        print(f"  {example.name:<16} {example.summary}{mark}; sizes: {', '.join(example.sizes)}")
    print("models:")
    for entry in registry.specs():
        spec = entry.spec
        if spec.style is xcfg.CFGStyle.NONE:
            detail = "refused: " + (spec.no_cfg_reason or "").split(":")[0]
        elif spec.guidance_distilled is not None:
            detail = f"{spec.style.value} (guidance-distilled checkpoints: with true CFG only)"
        else:
            detail = spec.style.value
        print(f"  {spec.name:<36} plugin {entry.plugin:<12} {detail}")
    return 0


def _launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun on ``nproc`` local ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "xcfg", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print(f"xcfg: launching {nproc} ranks: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command, env=env)


def _build(args: argparse.Namespace, device: torch.device) -> tuple[Any, dict[str, Any], str, str, str]:
    import xcfg

    if args.model:
        from diffusers import DiffusionPipeline

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
        accepted = inspect.signature(type(pipe).__call__).parameters
        kwargs: dict[str, Any] = {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
        for name, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames)):
            if value is not None:
                kwargs[name] = value
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        kwargs["num_inference_steps"] = args.steps or 30
        if args.guidance_scale is not None:
            kwargs["guidance_scale"] = args.guidance_scale
        output = "frames" if "num_frames" in accepted else "images"
        name = Path(args.model.rstrip("/")).name
        return pipe, kwargs, f"{type(pipe).__name__} from {args.model}", output, name
    example = xcfg.default_registry().example(args.example)
    size = args.size or ("small" if "small" in example.sizes else "tiny")
    run = example.build(size=size, device=device)
    kwargs = dict(run.kwargs)
    if args.steps:
        kwargs["num_inference_steps"] = args.steps
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    for name, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames)):
        if value is not None:
            kwargs[name] = value
    return run.pipe, kwargs, run.description, run.output, example.name


def _timed(pipe: Any, kwargs: dict[str, Any], seed: int, output: str, device: torch.device) -> tuple[torch.Tensor, list[float]]:
    stamps: list[float] = []

    def on_step_end(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        return {}

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stamps.append(time.perf_counter())
    result = pipe(**kwargs, generator=torch.Generator(device="cpu").manual_seed(seed), output_type="pt",
                  callback_on_step_end=on_step_end)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return getattr(result, output), steps


def _run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    import xcfg
    from xcfg.testing import relative_error

    device = xcfg.init_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    pipe, kwargs, description, output, name = _build(args, device)
    say = print if rank == 0 else (lambda *a, **k: None)
    backend = dist.get_backend() if dist.is_initialized() else "none"
    say(f"xcfg: {description} on {world} rank(s) ({backend}, {device.type})", flush=True)

    warm = {**kwargs, "num_inference_steps": 2}
    expected, single = None, []
    if not args.no_baseline:
        _timed(pipe, warm, args.seed, output, device)
        expected, single = _timed(pipe, kwargs, args.seed, output, device)
    # a call with true CFG makes the uncond call that guidance-distilled two-call models otherwise lack
    handle = xcfg.parallelize(pipe, true_cfg=float(kwargs.get("true_cfg_scale", 1.0)) > 1.0)
    _timed(pipe, warm, args.seed, output, device)
    actual, parallel = _timed(pipe, kwargs, args.seed, output, device)
    handle.remove()

    report: dict[str, Any] = {
        "example": name, "description": description, "ranks": world, "backend": backend, "device": str(device),
        "cfg_group_size": handle.group.size,
        "steps": kwargs.get("num_inference_steps"),
        "step_seconds_1_rank": statistics.median(single[1:] or single) if single else None,
        "step_seconds_n_ranks": statistics.median(parallel[1:] or parallel),
    }
    if expected is not None:
        report["relative_error"] = relative_error(actual, expected)
        tolerance = 1e-4 if actual.dtype == torch.float32 else 3e-2
        report["agree"] = report["relative_error"] <= tolerance
    if rank == 0:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = _save(actual, out_dir / name)
        report["output"] = str(path)
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        one, many = report["step_seconds_1_rank"], report["step_seconds_n_ranks"]
        if one is not None:
            print(f"  1 rank : {one:.4f} s/step (median)")
        print(f"  {world} ranks: {many:.4f} s/step (median)" + (f"  ->  {one / many:.2f}x" if one else ""))
        if "agree" in report:
            verdict = "agree" if report["agree"] else "DISAGREE"
            print(f"  outputs {verdict}: relative error {report['relative_error']:.2e} vs 1 rank")
        print(f"  wrote {path} and {out_dir / (name + '.json')}", flush=True)
    if dist.is_initialized():
        dist.barrier()  # leave together: tearing gloo down under a peer can abort it
        dist.destroy_process_group()
    return 0 if report.get("agree", True) else 1


def _save(result: torch.Tensor, stem: Path) -> Path:
    """Write a video as an animated GIF and an image as a PNG (Pillow only)."""
    from PIL import Image

    sample = result[0].detach().float().clamp(0, 1).cpu()
    if sample.dim() == 4:  # frames, channels, height, width
        frames = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for f in sample]
        path = stem.with_suffix(".gif")
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)
        return path
    path = stem.with_suffix(".png")
    Image.fromarray((sample.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    return path


if __name__ == "__main__":
    sys.exit(main())
