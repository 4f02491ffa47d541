"""The ``xcfg`` command: run a pipeline with CFG parallelism on N local ranks and compare with 1 rank.

``xcfg run`` (or plain ``xcfg``) launches itself under ``torchrun`` when it is not already running
there, so the same command works on a laptop CPU and on a GPU box. Every rank first runs the plain
pipeline (the 1-rank baseline), then the parallelized one; rank 0 prints both per-step times, whether
the outputs agree, what was split, and writes the output file.

Arguments are checked before any rank starts: a mistake costs a one-line error and exit code 2, never a
traceback, a baseline run or a rank per error message. ``--help`` and the checks that need no plugin
load neither torch nor diffusers; naming an example or a model loads the plugin registry (torch, not
diffusers) in the launching process to check the name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # the command imports torch only once a run starts
    import torch

DEFAULT_PROMPT = "a panda playing a guitar in a bamboo forest, cinematic lighting"
DENOISERS = ("transformer", "transformer_2", "unet")
DTYPES = ("auto", "float32", "bfloat16", "float16")
CFG_DEGREE = 2
USER_ERROR = 2

# Frame rates of the video pipelines whose call takes none, from diffusers' documented usage of each
# (``export_to_video(video, ..., fps=...)`` in the pipeline docs); a pipeline whose call takes a
# ``frame_rate`` or ``fps`` argument uses that instead.
FRAME_RATES = {"CogVideoX": 8, "Mochi": 30, "Wan": 16, "HunyuanVideo": 15, "Allegro": 15, "LTX": 24}
DEFAULT_FRAME_RATE = 8


class UserError(Exception):
    """A mistake in the command line or its environment: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xcfg",
        allow_abbrev=False,
        description="Run a diffusers pipeline with its CFG batch split across N local ranks, and compare with 1 rank.",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub_options = {"allow_abbrev": False}
    run = sub.add_parser("run", **sub_options, help="run a pipeline on 1 rank and on N ranks (the default command)",
                         description="Run a pipeline on 1 rank (the baseline) and on N ranks with xcfg, and compare.")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--example", help="a registered example built from configs with random weights "
                        "(default: the default example; see `xcfg list`)")
    source.add_argument("--model", help="a local diffusers pipeline folder, or a hub id already in the Hugging "
                        "Face cache, loaded with DiffusionPipeline.from_pretrained (real weights, real text "
                        "encoders; xcfg downloads nothing)")
    run.add_argument("--size", choices=["tiny", "small", "full"],
                     help="example size: tiny (tests), small (CPU demo), full (published size, GPU); "
                     "default: small where the example has it, else tiny")
    run.add_argument("--prompt", help=f"prompt, for --model (default: {DEFAULT_PROMPT!r}); examples use random "
                     "prompt embeddings")
    run.add_argument("--negative-prompt", help="negative prompt, for --model (default: empty)")
    run.add_argument("--guidance-scale", type=float, help="CFG scale (default: the example's or the pipeline's); "
                     "1 or less turns CFG off, which leaves nothing to split")
    run.add_argument("--true-cfg-scale", type=float, help="true-CFG scale for two-call pipelines that take one "
                     "(Flux, Qwen-Image, HunyuanVideo); above 1 it makes the uncond call that guidance-distilled "
                     "checkpoints otherwise lack")
    run.add_argument("--steps", type=int, help="denoising steps (default: the example's, or 30 for --model)")
    run.add_argument("--height", type=int)
    run.add_argument("--width", type=int)
    run.add_argument("--frames", type=int, help="frames, for video pipelines")
    run.add_argument("--seed", type=int, default=0, help="seed of the generator every rank uses (default: 0)")
    run.add_argument("--dtype", choices=DTYPES, default="auto",
                     help="weights' dtype (default auto: bfloat16 on GPUs, float32 on CPUs)")
    run.add_argument("--no-vae-tiling", action="store_true",
                     help="leave the VAE's tiling off; by default it is turned on where xcfg splits the tiled "
                     "decode across the ranks (CogVideoX, Mochi, AutoencoderKL pipelines)")
    run.add_argument("--compile", action="store_true", help="torch.compile the denoisers (both runs)")
    run.add_argument("--offload", choices=["model"],
                     help="model: diffusers' model CPU offload on each rank's own GPU (needs accelerate and CUDA)")
    run.add_argument("--out", default="xcfg-out", help="folder for the output file and report (default: xcfg-out)")
    run.add_argument("--no-baseline", action="store_true", help="skip the 1-rank run")
    launch = run.add_argument_group("launching (ignored when already running under torchrun)")
    launch.add_argument("--nproc", type=int, default=2, help="ranks per node (default: 2)")
    launch.add_argument("--nnodes", type=int, default=1, help="nodes, passed to torchrun (default: 1)")
    launch.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="torchrun's rendezvous endpoint, the same on every node; needed with --nnodes > 1")
    sub.add_parser("list", **sub_options, help="list the registered examples and supported models")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xcfg`` console command; returns the exit code (2 for a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in {"-h", "--help"}:
        argv = ["run", *argv]
    try:
        args = _parser().parse_args(argv)
        if args.command == "list":
            return _list()
        if args.command is None:
            args = _parser().parse_args(["run"])
        _check_arguments(args)
        under_torchrun = "RANK" in os.environ
        if not under_torchrun:
            _check_with_registry(args)
            if args.nproc * args.nnodes > 1:
                return _launch(args, argv)
        return _run(args)
    except UserError as err:
        if _is_rank_zero():
            print(f"xcfg: error: {err}", file=sys.stderr, flush=True)
        return USER_ERROR
    except BrokenPipeError:  # `xcfg list | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed pipe until exit
        return 0


def _is_rank_zero() -> bool:
    from ._log import is_main_process

    return is_main_process()


# -- checks, before any rank starts ------------------------------------------------------------------


def _check_arguments(args: argparse.Namespace) -> None:
    """Checks that need nothing but the arguments and the file system (no torch, no plugin)."""
    for name in ("steps", "height", "width", "frames", "nproc", "nnodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, not {value}")
    world = _world_size(args)
    if world > 1 and world % CFG_DEGREE:
        raise UserError(
            f"a world of {world} rank(s) does not divide into CFG groups of {CFG_DEGREE} (the uncond and cond "
            f"halves): launch a multiple of {CFG_DEGREE}, e.g. --nproc {CFG_DEGREE}"
        )
    if args.nnodes > 1 and not args.rdzv_endpoint and "RANK" not in os.environ:
        raise UserError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT, the same on every node")
    if args.true_cfg_scale is not None and args.true_cfg_scale <= 1:
        raise UserError(f"--true-cfg-scale {args.true_cfg_scale:g} turns true CFG off, which leaves nothing to split: "
                        "pass a scale above 1, or leave it out")
    if args.guidance_scale is not None and args.guidance_scale <= 1 and args.true_cfg_scale is None:
        raise UserError(f"--guidance-scale {args.guidance_scale:g} turns CFG off, which leaves nothing to split: "
                        "pass a scale above 1 (true-CFG pipelines such as Flux and Qwen-Image: --true-cfg-scale)")
    if args.model is None:
        for flag, value in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt)):
            if value is not None:
                raise UserError(f"{flag} needs --model: the examples run on random prompt embeddings")
    else:
        if args.size is not None:
            raise UserError("--size applies to --example only; --model runs the checkpoint at its size "
                            "(set --height, --width, --frames)")
        args.model_index = _model_index(args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a folder")


def _world_size(args: argparse.Namespace) -> int:
    if "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["WORLD_SIZE"])
        except ValueError:
            pass
    return args.nproc * args.nnodes


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or value.count("/") != 1 or os.sep != "/" and os.sep in value


def _model_index(model: str) -> Path:
    """The ``model_index.json`` of a local pipeline folder or a cached hub id; a user error otherwise."""
    folder = Path(model).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"--model {model}: is a file; pass a diffusers pipeline folder (with model_index.json)")
        index = folder / "model_index.json"
        if not index.is_file():
            raise UserError(f"--model {model}: no model_index.json there, so it is not a diffusers pipeline folder")
        return index
    if _looks_like_path(model):
        raise UserError(f"--model {model}: no such folder")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - diffusers depends on huggingface_hub
        raise UserError(f"--model {model}: no such folder") from None
    cached = try_to_load_from_cache(model, "model_index.json")
    if not isinstance(cached, str):
        raise UserError(f"--model {model}: not a local folder and not in the Hugging Face cache; xcfg downloads "
                        f"nothing: fetch it first (`hf download {model}`) or pass its folder")
    return Path(cached)


def _check_with_registry(args: argparse.Namespace) -> None:
    """Checks that need the plugins: the example's name and size, the model's denoiser classes."""
    if args.model is not None:
        _check_model(args)
        return
    from ._registry import default_registry

    registry = default_registry()
    names = [example.name for example in registry.examples()]
    if args.example is not None and args.example not in names:
        raise UserError(f"--example {args.example}: no such example; known: {', '.join(sorted(names))}")
    example = registry.example(args.example)
    if args.size is not None and args.size not in example.sizes:
        raise UserError(f"--size {args.size}: example {example.name} has sizes {', '.join(example.sizes)}")


def _check_model(args: argparse.Namespace) -> None:
    from ._registry import default_registry
    from ._spec import CFGStyle

    index = json.loads(args.model_index.read_text())
    denoisers = {k: v for k, v in index.items() if k in DENOISERS and isinstance(v, list) and len(v) == 2 and v[1]}
    if not denoisers:
        raise UserError(f"--model {args.model}: its pipeline ({index.get('_class_name')}) has no transformer or unet")
    registry = default_registry()
    by_name = {entry.spec.name: entry.spec for entry in registry.specs()}
    for attribute, (library, class_name) in denoisers.items():
        spec = by_name.get(class_name)
        if spec is None and library == "diffusers":  # a subclass of a supported class still matches
            import diffusers

            cls = getattr(diffusers, class_name, None)
            entry = registry.lookup(cls) if isinstance(cls, type) else None
            spec = entry.spec if entry is not None else None
        if spec is None:
            raise UserError(f"--model {args.model}: xcfg has no plugin for its {attribute}, {class_name} "
                            "(`xcfg list` shows the supported models)")
        if spec.style is CFGStyle.NONE:
            raise UserError(f"--model {args.model}: {class_name} has no CFG to split: {spec.no_cfg_reason}")
        if spec.guidance_distilled is not None and args.true_cfg_scale is None:
            if _distilled(spec, args.model_index.parent / attribute / "config.json"):
                raise UserError(f"--model {args.model}: this {class_name} checkpoint is guidance-distilled, so its "
                                "pipeline makes no uncond call: pass --true-cfg-scale (above 1) and a "
                                "--negative-prompt to run true CFG")


def _distilled(spec: Any, config_path: Path) -> bool:
    """Ask the spec whether the checkpoint is guidance-distilled, from its config alone; ``False`` when it
    cannot tell that way (``parallelize`` then decides on the loaded model)."""
    from types import SimpleNamespace

    try:
        config = json.loads(config_path.read_text())
        return bool(spec.guidance_distilled(SimpleNamespace(config=SimpleNamespace(**config))))
    except Exception:
        return False


# -- listing and launching ---------------------------------------------------------------------------


def _list() -> int:
    from ._registry import default_registry
    from ._spec import CFGStyle

    registry = default_registry()
    print("examples (xcfg run --example NAME):")
    for example in registry.examples():
        mark = " (default)" if example.default else ""
        print(f"  {example.name:<16} {example.summary}{mark}; sizes: {', '.join(example.sizes)}")
    print("models:")
    for entry in registry.specs():
        spec = entry.spec
        if spec.style is CFGStyle.NONE:
            detail = "refused: " + (spec.no_cfg_reason or "").split(":")[0]
        elif spec.guidance_distilled is not None:
            detail = f"{spec.style.value} (guidance-distilled checkpoints: with true CFG only)"
        else:
            detail = spec.style.value
        print(f"  {spec.name:<36} plugin {entry.plugin:<12} {detail}")
    return 0


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--rdzv-endpoint")


def _rank_argv(argv: list[str]) -> list[str]:
    """``argv`` without the launching options: torchrun would take them for its own (``--nproc`` is a
    prefix of its ``--nproc-per-node``), and under torchrun the world comes from torchrun itself."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            out.append(arg)
    return out


def torchrun_command(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``xcfg`` with ``argv`` (less the launching options) on every rank."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}"]
    if args.nnodes > 1:
        command += [f"--nnodes={args.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}",
                    "--rdzv-id=xcfg"]
    else:
        command.append("--standalone")
    return [*command, "-m", "xcfg", *_rank_argv(argv)]


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-run this command under torchrun; the ranks see the same arguments (torchrun sets ``RANK``)."""
    command = torchrun_command(args, argv)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    print(f"xcfg: launching {args.nproc * args.nnodes} ranks: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command, env=env)


# -- a run, on every rank ----------------------------------------------------------------------------


def _dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    import torch

    if args.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, args.dtype)


def _build(args: argparse.Namespace, device: torch.device) -> tuple[Any, dict[str, Any], str, str, str]:
    import inspect

    dtype = _dtype(args, device)
    if args.model:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(args.model_index.parent), torch_dtype=dtype)
        if not args.offload:
            pipe = pipe.to(device)
        accepted = inspect.signature(type(pipe).__call__).parameters
        kwargs: dict[str, Any] = {"prompt": args.prompt or DEFAULT_PROMPT, "negative_prompt": args.negative_prompt or ""}
        for name, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames),
                            ("guidance_scale", args.guidance_scale), ("true_cfg_scale", args.true_cfg_scale)):
            if value is not None:
                if name not in accepted:
                    raise UserError(f"{type(pipe).__name__} takes no {name} (from --{name.replace('_', '-')})")
                kwargs[name] = value
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        kwargs["num_inference_steps"] = args.steps or 30
        output = "frames" if "num_frames" in accepted else "images"
        name = Path(args.model.rstrip("/")).name
        return pipe, kwargs, f"{type(pipe).__name__} from {args.model}", output, name
    from ._registry import default_registry

    example = default_registry().example(args.example)
    size = args.size or ("small" if "small" in example.sizes else "tiny")
    run = example.build(size=size, device=device, dtype=dtype)
    kwargs = dict(run.kwargs)
    accepted = inspect.signature(type(run.pipe).__call__).parameters
    for name, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance_scale),
                        ("true_cfg_scale", args.true_cfg_scale), ("height", args.height), ("width", args.width),
                        ("num_frames", args.frames)):
        if value is not None:
            if name not in accepted:
                raise UserError(f"example {example.name} ({type(run.pipe).__name__}) takes no {name}")
            kwargs[name] = value
    return run.pipe, kwargs, run.description, run.output, example.name


def _timed(pipe: Any, kwargs: dict[str, Any], seed: int, output: str, device: torch.device) -> tuple[Any, list[float]]:
    import time

    import torch

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


class _Tally:
    """Per denoiser call: the batch the pipeline passed, and the batch this rank's layers computed
    (``None`` when the rank computed nothing: a two-call step whose call the peer computed)."""

    def __init__(self, models: list[Any]) -> None:
        self.models = models
        self.calls: list[list[int | None]] = []
        self._handles: list[Any] = []

    @staticmethod
    def _batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        import torch

        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
        return None

    def __enter__(self) -> _Tally:
        def called(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.calls.append([self._batch(args, kwargs) or 0, None])

        def computed(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.calls and self.calls[-1][1] is None:
                self.calls[-1][1] = self._batch(args, kwargs)

        for model in self.models:
            self._handles.append(model.register_forward_pre_hook(called, with_kwargs=True))
            for child in model.children():
                self._handles.append(child.register_forward_pre_hook(computed, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def summary(self) -> dict[str, Any]:
        split = [c for c in self.calls if c[1] is None or c[1] < c[0]]
        computed = [c[1] for c in self.calls if c[1] is not None]
        requested = [c[0] for c in self.calls]
        return {
            "denoiser_calls": len(self.calls),
            "calls_split": len(split),
            "calls_computed_here": len(computed),
            "samples_requested": sum(requested),
            "samples_computed_here": sum(computed),
            "batch_requested": max(set(requested), key=requested.count) if requested else None,
            "batch_computed_here": max(set(computed), key=computed.count) if computed else None,
        }


def _quiet_other_ranks(rank: int) -> None:
    """Libraries' own warnings and progress bars, once: rank 0 speaks, the other ranks keep errors only."""
    import warnings

    from . import _log

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        _log.warn_once(f"{category.__name__}: {message}" if not str(message).startswith("xcfg") else str(message))

    warnings.showwarning = show  # every warning through the rank-filtered logger, each text once
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = _log.get_logger()
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if rank != 0:
        for library in ("diffusers", "transformers"):
            try:
                module = __import__(f"{library}.utils.logging", fromlist=["set_verbosity_error"])
                module.set_verbosity_error()
            except Exception:
                pass


def _enable_vae_tiling(pipe: Any, registry: Any) -> bool:
    from ._spec import VAESpec

    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling") or registry.lookup(type(vae), kind=VAESpec) is None:
        return False
    vae.enable_tiling()
    return True


def _run(args: argparse.Namespace) -> int:
    import statistics

    import torch
    import torch.distributed as dist

    import xcfg

    from ._registry import default_registry
    from .testing import relative_error

    device = xcfg.init_distributed()
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    _quiet_other_ranks(rank)
    try:
        if world > 1 and world % CFG_DEGREE:
            raise UserError(f"a world of {world} ranks does not divide into CFG groups of {CFG_DEGREE}: "
                            f"launch a multiple of {CFG_DEGREE}")
        if args.offload and device.type != "cuda":
            raise UserError("--offload moves models between the CPU and each rank's GPU: it needs CUDA devices")
        if "RANK" in os.environ:
            _check_with_registry(args)  # launched by the user's own torchrun: the checks run here
        pipe, kwargs, description, output, name = _build(args, device)
    except UserError:
        _leave(dist)
        raise
    registry = default_registry()
    tiling = not args.no_vae_tiling and _enable_vae_tiling(pipe, registry)
    if rank != 0 and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    denoisers = [m for m in (getattr(pipe, a, None) for a in DENOISERS) if isinstance(m, torch.nn.Module)]
    if args.compile:
        for model in denoisers:
            model.compile()
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    say = print if rank == 0 else (lambda *a, **k: None)
    backend = dist.get_backend() if dist.is_initialized() else "none"
    say(f"xcfg: {description} on {world} rank(s) ({backend}, {device.type}, {_dtype(args, device)})"
        + (", VAE tiling on" if tiling else ""), flush=True)

    warm = {**kwargs, "num_inference_steps": min(2, kwargs.get("num_inference_steps") or 2)}
    expected, single = None, []
    if not args.no_baseline:
        _timed(pipe, warm, args.seed, output, device)
        expected, single = _timed(pipe, kwargs, args.seed, output, device)
    if args.offload:
        pipe.remove_all_hooks()  # the recipe: parallelize on the device, then offload (docs/compatibility.md)
        pipe.to(device)
    try:
        handle = xcfg.parallelize(pipe, true_cfg=float(kwargs.get("true_cfg_scale") or 1.0) > 1.0)
    except xcfg.RefusedError as err:
        _leave(dist)
        raise UserError(str(err).splitlines()[0]) from None
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    if args.compile:
        torch.compiler.reset()
        for model in denoisers:
            model.compile()
    _timed(pipe, warm, args.seed, output, device)
    current = [m for m in (getattr(pipe, a, None) for a in DENOISERS) if isinstance(m, torch.nn.Module)]
    with _Tally(current) as tally:  # the pipeline's denoisers now, as parallelize left them
        actual, parallel = _timed(pipe, kwargs, args.seed, output, device)
    active = handle.active
    handle.remove()

    split = tally.summary()
    if not active:  # a world of one: xcfg installed nothing, whatever the hooks saw
        split.update(calls_split=0, calls_computed_here=split["denoiser_calls"],
                     samples_computed_here=split["samples_requested"], batch_computed_here=split["batch_requested"])
    elif args.compile:  # the layers run inside the compiled graph, where the counting hooks do not fire
        split.update(calls_split=None, calls_computed_here=None, samples_computed_here=None, batch_computed_here=None)
    group = handle.group.size
    report: dict[str, Any] = {
        "example": name, "description": description, "ranks": world, "backend": backend, "device": str(device),
        "dtype": str(_dtype(args, device)).removeprefix("torch."), "vae_tiling": tiling, "compile": args.compile,
        "offload": args.offload, "cfg_group_size": group, "cfg_groups": world // group if group else 1,
        "steps": kwargs.get("num_inference_steps"), "split": split,
        "step_seconds_1_rank": statistics.median(single[1:] or single) if single else None,
        "step_seconds_n_ranks": statistics.median(parallel[1:] or parallel),
    }
    if expected is not None:
        report["relative_error"] = relative_error(actual, expected)
        tolerance = 1e-4 if actual.dtype == torch.float32 else 3e-2
        report["agree"] = report["relative_error"] <= tolerance
    if rank == 0:
        _print_report(report, world)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = _save(actual, out_dir / name, _frame_rate(pipe, kwargs))
        report["output"] = str(path)
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"  wrote {path} and {out_dir / (name + '.json')}", flush=True)
    _leave(dist)
    return 0 if report.get("agree", True) else 1


def _leave(dist: Any) -> None:
    if dist.is_initialized():
        dist.barrier()  # leave together: tearing gloo down under a peer can abort it
        dist.destroy_process_group()


def _print_report(report: dict[str, Any], world: int) -> None:
    split = report["split"]
    one, many = report["step_seconds_1_rank"], report["step_seconds_n_ranks"]
    if one is not None:
        print(f"  1 rank : {one:.4f} s/step (median)")
    if split["calls_split"] is None:
        print(f"  {world} ranks: {many:.4f} s/step (median)" + (f"  ->  {one / many:.2f}x" if one else ""))
        print(f"  split: xcfg is installed on CFG groups of {report['cfg_group_size']}; under --compile the calls each "
              "rank computed are not counted")
    elif split["calls_split"] == 0:
        why = "a world of one" if world == 1 else "CFG off, or calls xcfg runs whole (see the warnings above)"
        print(f"  {world} rank(s): {many:.4f} s/step (median); nothing was split ({why}): every rank ran all "
              f"{split['denoiser_calls']} denoiser calls whole, so there is no speedup to report")
    else:
        print(f"  {world} ranks: {many:.4f} s/step (median)" + (f"  ->  {one / many:.2f}x" if one else ""))
        print(f"  split: {split['calls_split']} of {split['denoiser_calls']} denoiser calls; this rank computed "
              f"{split['samples_computed_here']} of {split['samples_requested']} samples in "
              f"{split['calls_computed_here']} calls (batch {split['batch_computed_here']} of "
              f"{split['batch_requested']} per call)")
    if report["cfg_groups"] > 1:
        print(f"  {report['cfg_groups']} CFG groups of {report['cfg_group_size']} ranks each ran the same call: "
              "a group beyond the first repeats the work (the speedup is one group's)")
    if "agree" in report:
        verdict = "agree" if report["agree"] else "DISAGREE"
        print(f"  outputs {verdict}: relative error {report['relative_error']:.2e} vs 1 rank")


def _frame_rate(pipe: Any, kwargs: dict[str, Any]) -> int:
    """The pipeline's frame rate: its call's ``frame_rate``/``fps`` (given or default), else the rate
    diffusers documents for its family, else 8."""
    import inspect

    parameters = inspect.signature(type(pipe).__call__).parameters
    for name in ("frame_rate", "fps"):
        if name in parameters:
            value = kwargs.get(name, parameters[name].default)
            if isinstance(value, (int, float)) and value > 0:
                return int(round(value))
    cls = type(pipe).__name__
    for family, rate in FRAME_RATES.items():
        if cls.startswith(family):
            return rate
    return DEFAULT_FRAME_RATE


def _save(result: Any, stem: Path, fps: int) -> Path:
    """Write a video through diffusers' export helpers (MP4 where imageio-ffmpeg is installed, else an
    animated GIF) at the pipeline's frame rate, and an image as a PNG."""
    import importlib.util

    from PIL import Image

    sample = result[0].detach().float().clamp(0, 1).cpu()

    def image(tensor: Any) -> Image.Image:
        return Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))

    if sample.dim() == 4:  # frames, channels, height, width
        from diffusers.utils import export_to_gif, export_to_video

        frames = [image(f) for f in sample]
        if importlib.util.find_spec("imageio") and importlib.util.find_spec("imageio_ffmpeg"):
            return Path(export_to_video(frames, str(stem.with_suffix(".mp4")), fps=fps))
        return Path(export_to_gif(frames, str(stem.with_suffix(".gif")), fps=fps))
    path = stem.with_suffix(".png")
    image(sample).save(path)
    return path


if __name__ == "__main__":
    sys.exit(main())
