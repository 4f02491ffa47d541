"""One rank of a benchmark launch (started by ``run.py`` under torchrun): build each model once, time the phases.

Phases, in order, on the same pipeline object (so the model is built and the kernels are loaded once):

- ``plain_1gpu``: every rank runs the plain diffusers pipeline on its own GPU, independently (the 1-GPU
  baseline; rank 0 reports it, the other ranks' numbers are kept in the JSON). Both GPUs are busy, as
  they are in the 2-GPU phases, so the host is in the same state.
- ``xcfg_1gpu``: ``xcfg.parallelize(pipe, group=xcfg.CFGGroup.single())`` on every rank, what a world of
  one gets: the overhead of applying xcfg where there is nothing to split. Latents only, no decode.
- ``seed_2gpu``: the minimal seed-style wrapper (``_seed_wrapper.py``) on 2 GPUs.
- ``xcfg_2gpu``: ``xcfg.parallelize(pipe)`` on 2 GPUs.
- with ``--compile``: ``compiled_1gpu`` (``transformer.compile()``, every rank alone) and
  ``compiled_xcfg_2gpu`` (the same compiled transformer with xcfg on 2 GPUs).
- with ``--layouts``: ``layout_<name>`` for each layout (``cfg2xu4``: CFG 2 x Ulysses 4), after the phases
  above: ``xcfg.parallelize(pipe, mesh=...)`` on a mesh ``(replica, cfg, ring, ulysses)`` over the whole
  launch, so a layout of fewer ranks than the launch runs as identical replicas (rank 0's replica reports).
  With ``--cpu`` (gloo, no accelerator) diffusers' ``enable_parallelism`` needs the accelerator count seen
  as 1 inside its config set-up: :func:`_cpu_accelerator_shim`, applied in this benchmark's CPU smoke mode only.

Each phase: a warm-up run, then one timed pipeline call. Per step: a CUDA event recorded in
``callback_on_step_end`` (no synchronize, so the CPU queues ahead as in a user's run; a timestamp on
the CPU); the median of the intervals between consecutive step ends (the first step, which also holds
the pipeline's set-up, is left out). End to end: the whole call, VAE
decode included. Peak memory: ``torch.cuda.max_memory_allocated`` per rank, reset at the start of
each phase. Rank 0 writes ``<raw>/<example>.json`` after every phase, so a later failure keeps what
was measured.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

PHASES: dict[str, str] = {
    "plain_1gpu": "1 GPU, plain diffusers",
    "xcfg_1gpu": "1 GPU, xcfg.parallelize with a group of one",
    "seed_2gpu": "2 GPUs, minimal seed-style wrapper",
    "xcfg_2gpu": "2 GPUs, xcfg.parallelize",
    "compiled_1gpu": "1 GPU, torch.compile",
    "compiled_xcfg_2gpu": "2 GPUs, xcfg.parallelize + torch.compile",
}


@dataclass
class _Timed:
    start: float
    stamps: list[float]
    end: float
    output: torch.Tensor
    latents: torch.Tensor | None

    @property
    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


class _Bench:
    """The state of one rank while it benchmarks one model."""

    def __init__(self, args: Any, device: torch.device, raw: Path) -> None:
        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.raw = raw

    # -- helpers -------------------------------------------------------------------------------------

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def call(self, pipe: Any, kwargs: dict[str, Any], output: str, steps: int, decode: bool) -> _Timed:
        marks: list[Any] = []
        final: dict[str, torch.Tensor] = {}

        def mark() -> Any:
            # On a GPU, an event on the stream: it times the GPU's timeline without a synchronize per step,
            # so the CPU keeps queueing ahead exactly as it does in a user's run.
            if not self.cuda:
                return time.perf_counter()
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def on_step(latents: torch.Tensor) -> None:
            marks.append(mark())
            final["latents"] = latents  # a new tensor every step: no copy needed

        call = dict(kwargs, num_inference_steps=steps, output_type="pt" if decode else "latent")
        with step_callback(pipe, on_step) as extra:
            self.sync()
            start = time.perf_counter()
            first = mark()
            result = pipe(**call, **extra, generator=torch.Generator().manual_seed(self.args.seed))
        self.sync()
        end = time.perf_counter()
        if self.cuda:
            stamps = [start + first.elapsed_time(event) / 1000 for event in marks]
        else:
            stamps = marks
        return _Timed(start, stamps, end, getattr(result, output), final.get("latents"))

    # -- one model -----------------------------------------------------------------------------------

    def model(self, name: str) -> None:
        import xcfg

        args = self.args
        record: dict[str, Any] = {"example": name, "complete": False, "phases": {}}
        path = self.raw / f"{name}.json"

        def save() -> None:
            if self.rank == 0:
                path.write_text(json.dumps(record, indent=2) + "\n")

        example = xcfg.default_registry().example(name)
        size = "tiny" if args.cpu else "full"
        steps = args.steps or (3 if args.cpu else _default_steps(name))
        warmup = args.warmup_steps if args.warmup_steps is not None else 2
        self.sync()
        began = time.perf_counter()
        run = example.build(size=size, device=self.device)
        pipe = run.pipe
        self.sync()
        build_s = time.perf_counter() - began
        pipe.set_progress_bar_config(disable=True)
        tiled = run.output == "frames" and hasattr(pipe.vae, "enable_tiling")
        if tiled:
            pipe.vae.enable_tiling()  # as users do for video at these sizes; the same in every phase
        randomized = _randomize_zero_weights(pipe, args.seed)
        kwargs = dict(run.kwargs)
        record.update(
            description=run.description,
            model=run.description.split(",")[0],
            size=size,
            call={k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)},
            text_shapes={k: list(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)},
            dtype=str(next(pipe.transformer.parameters()).dtype).replace("torch.", ""),
            steps=steps,
            warmup_steps=warmup,
            measured_intervals=steps - 1,
            parameters={m: _count(getattr(pipe, m)) for m in ("transformer", "vae")},
            vae_tiling=tiled,
            randomized_zero_parameters=randomized,
            build_s=build_s,
            world_size=self.world,
            backend=str(dist.get_backend()),
            environment=environment(self.device),
            weights_gib=torch.cuda.memory_allocated(self.device) / 2**30 if self.cuda else None,
        )
        save()

        reference: dict[str, torch.Tensor] = {}

        def phase(key: str, gpus: int, *, warm_decode: bool, decode: bool = True, warm: int = warmup) -> None:
            dist.barrier()
            began = time.perf_counter()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            breaks_before = _graph_breaks()
            if warm:
                self.call(pipe, kwargs, run.output, warm, warm_decode)
            dist.barrier()
            timed = self.call(pipe, kwargs, run.output, steps, decode)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None
            result = timed.output if decode else timed.latents
            intervals = timed.intervals
            wide = result.double()
            mine = {
                "step_median_s": statistics.median(intervals) if intervals else None,
                "e2e_s": timed.end - timed.start if decode else None,
                "peak_gib": peak,
                "checksum": [float(wide.sum()), float(wide.abs().sum())],  # equal on every rank after a gather
            }
            del wide
            ranks = self.gather(mine)
            entry: dict[str, Any] = {
                "label": PHASES[key],
                "gpus": gpus,
                "warmup_steps": warm,
                "decoded": decode,
                "step_s": intervals,
                "step_median_s": mine["step_median_s"],
                "step_min_s": min(intervals) if intervals else None,
                "step_max_s": max(intervals) if intervals else None,
                "denoise_s": timed.stamps[-1] - timed.start,
                "e2e_s": mine["e2e_s"],
                "decode_s": timed.end - timed.stamps[-1] if decode else None,
                "peak_gib": [r["peak_gib"] for r in ranks],
                "ranks": ranks,
                "ranks_identical": all(r["checksum"] == ranks[0]["checksum"] for r in ranks) if gpus > 1 else None,
                "finite": bool(torch.isfinite(result).all()),
            }
            if key.startswith("compiled"):
                entry["graph_breaks"] = _graph_breaks() - breaks_before
            if self.rank == 0:
                if key == "plain_1gpu":
                    reference["output"] = timed.output.detach().float().cpu()
                    reference["latents"] = timed.latents.detach().float().cpu()
                else:
                    from xcfg.testing import relative_error

                    if decode:
                        entry["rel_error"] = relative_error(timed.output.float(), reference["output"])
                    entry["rel_error_latents"] = relative_error(timed.latents.float(), reference["latents"])
            entry["seconds"] = time.perf_counter() - began
            record["phases"][key] = entry
            save()
            if self.rank == 0:
                print(f"bench: {name}: {key}: {_fmt(entry['step_median_s'])} s/step, end to end "
                      f"{_fmt(entry['e2e_s'])} s, peak {_fmt(peak)} GiB, phase {entry['seconds']:.0f} s", flush=True)
            del timed, result

        wanted = set(args.phases)
        phase("plain_1gpu", 1, warm_decode=True)  # always: the reference of every other phase
        if "xcfg_1gpu" in wanted:
            with xcfg.parallelize(pipe, group=xcfg.CFGGroup.single()):
                phase("xcfg_1gpu", 1, warm_decode=False, decode=False, warm=0)
        from _seed_wrapper import BATCH_ARGUMENTS

        if self.world >= 2 and "seed_2gpu" in wanted and type(pipe.transformer).__name__ in BATCH_ARGUMENTS:
            from _seed_wrapper import install

            remove = install(pipe.transformer)
            try:
                phase("seed_2gpu", 2, warm_decode=False)
            finally:
                remove()
        if self.world >= 2 and "xcfg_2gpu" in wanted:
            with xcfg.parallelize(pipe):
                phase("xcfg_2gpu", 2, warm_decode=False)
        if wanted & {"compiled_1gpu", "compiled_xcfg_2gpu"}:
            pipe.transformer.compile(mode=args.compile_mode)
            if "compiled_1gpu" in wanted:
                phase("compiled_1gpu", 1, warm_decode=False)
            if self.world >= 2 and "compiled_xcfg_2gpu" in wanted:
                torch._dynamo.reset()  # trace again, with the xcfg wrapper in the forward
                with xcfg.parallelize(pipe):
                    phase("compiled_xcfg_2gpu", 2, warm_decode=False)
        for layout in args.layouts or ():
            degrees = _layout_degrees(layout)
            gpus = degrees["cfg"] * degrees["ring"] * degrees["ulysses"]
            PHASES[f"layout_{layout}"] = f"{gpus} GPUs, " + " x ".join(
                f"{k} {v}" for k, v in degrees.items() if v > 1)
            mesh = _layout_mesh(self.device, self.world, degrees)
            backend = contextlib.ExitStack()
            if args.attention_backend:
                from diffusers.models.attention_dispatch import attention_backend

                backend.enter_context(attention_backend(args.attention_backend))
            try:
                handle = xcfg.parallelize(pipe, mesh=mesh)
            except xcfg.RefusedError as err:  # refused on every rank, before any collective: the next layout
                record["phases"][f"layout_{layout}"] = {"label": PHASES[f"layout_{layout}"], "gpus": gpus,
                                                        "refused": str(err)}
                save()
                backend.close()
                if self.rank == 0:
                    print(f"bench: {name}: layout_{layout}: refused: {err}", flush=True)
                continue
            with backend, handle:
                phase(f"layout_{layout}", gpus, warm_decode=False)
        record["complete"] = True
        save()
        del pipe, run, kwargs, reference
        if wanted & {"compiled_1gpu", "compiled_xcfg_2gpu"}:
            torch._dynamo.reset()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


@contextlib.contextmanager
def step_callback(pipe: Any, on_step: Any) -> Any:
    """Within the block, ``pipe`` calls ``on_step(latents)`` at the end of every denoising step; the block gets
    the call arguments that arrange it: ``callback_on_step_end`` where the pipeline takes it, else the older
    ``callback`` with ``callback_steps=1`` (Stable Audio), else none, with the scheduler's ``step`` wrapped
    (HunyuanVideo 1.5, which calls back at no step) and restored at the end."""
    parameters = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in parameters:

        def on_step_end(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(tensors["latents"])
            return {}

        yield {"callback_on_step_end": on_step_end}
    elif "callback" in parameters:
        yield {"callback": lambda _step, _t, latents: on_step(latents), "callback_steps": 1}
    else:
        scheduler = pipe.scheduler
        original = scheduler.step

        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            on_step(out[0] if isinstance(out, tuple) else out.prev_sample)
            return out

        scheduler.step = step
        try:
            yield {}
        finally:
            del scheduler.step


def _layout_degrees(name: str) -> dict[str, int]:
    from run import layout_degrees

    return layout_degrees(name)


def _layout_mesh(device: torch.device, world: int, degrees: dict[str, int]) -> Any:
    """A mesh ``(replica, cfg, ring, ulysses)`` over the whole launch."""
    from torch.distributed.device_mesh import init_device_mesh

    ranks = degrees["cfg"] * degrees["ring"] * degrees["ulysses"]
    return init_device_mesh(
        device.type, (world // ranks, degrees["cfg"], degrees["ring"], degrees["ulysses"]),
        mesh_dim_names=("replica", "cfg", "ring", "ulysses"),
    )


def _cpu_accelerator_shim() -> None:
    """CPU smoke mode only: diffusers' parallel-config set-up computes ``rank % torch.accelerator.device_count()``,
    0 without an accelerator; inside that set-up alone, the count is seen as 1."""
    from diffusers.models.modeling_utils import ModelMixin

    original = ModelMixin._resolve_parallel_config
    count = torch.accelerator.device_count

    def resolve(self: Any, config: Any) -> Any:
        torch.accelerator.device_count = lambda: max(count(), 1)
        try:
            return original(self, config)
        finally:
            torch.accelerator.device_count = count

    ModelMixin._resolve_parallel_config = resolve


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def _default_steps(name: str) -> int:
    """Steps of the timed call: 10 for the video models (9 measured intervals), 30 for image models."""
    return {"cogvideox": 10, "mochi": 10, "wan": 10}.get(name, 30)


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def _randomize_zero_weights(pipe: Any, seed: int) -> list[str]:
    """The denoiser's and the VAE's parameters a constructor leaves at zero, given random values (the same on
    every rank), so that nothing is timed on zeros; their names."""
    from xcfg_plugins import _common

    names = []
    for component in ("transformer", "vae"):
        module = getattr(pipe, component, None)
        if isinstance(module, torch.nn.Module):
            names += [f"{component}.{n}" for n in _common.randomize_zero_weights(module, seed + 2, scale=0.02)]
    return names


def _graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))
    except Exception:  # private API: informational only
        return -1


def environment(device: torch.device) -> dict[str, Any]:
    """Card, counts and versions, for the report."""
    import diffusers

    import xcfg

    env: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "xcfg": xcfg.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env.update(
            card=torch.cuda.get_device_name(device),
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            nccl=_nccl_version(),
            gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
        )
    else:
        env.update(card=f"CPU ({platform.processor() or platform.machine()})", gpus=0)
    return env


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def ensure_examples(names: list[str]) -> None:
    """Make the built-in examples available even where the project is not installed (no entry-point
    metadata, as on a bare GPU machine with only ``PYTHONPATH``): register the ``xcfg_plugins`` modules
    that are missing, through the public registry API.

    Raises:
        KeyError: an example name no plugin offers; the message lists the registered ones.
    """
    import importlib
    import pkgutil

    import xcfg
    import xcfg_plugins

    registry = xcfg.default_registry()
    known = {example.name for example in registry.examples()}
    if not set(names) <= known:
        registered = set(registry.plugin_names())
        for info in pkgutil.iter_modules(xcfg_plugins.__path__):
            if not info.name.startswith("_") and info.name not in registered:
                registry.register(importlib.import_module(f"xcfg_plugins.{info.name}"), name=info.name)
    for name in names:
        registry.example(name)


def main(args: Any) -> int:
    """The worker's entry point: every rank of the launch runs it."""
    import xcfg

    ensure_examples(args.models)
    device = xcfg.init_distributed()
    if not dist.is_initialized():
        raise SystemExit("run.py --worker must run under torchrun")
    if args.cpu:
        torch.set_num_threads(1)
        if args.layouts:
            _cpu_accelerator_shim()
    raw = Path(args.raw)
    bench = _Bench(args, device, raw)
    try:
        for name in args.models:
            if bench.rank == 0:
                print(f"bench: {name}: building and timing on {bench.world} ranks", flush=True)
            bench.model(name)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0
