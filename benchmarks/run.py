"""Benchmark xcfg: 1 GPU vs 2 GPUs on full-size CogVideoX-5B, Mochi-1, SD3.5-large and SD3-medium.

One invocation measures both sides on the same machine. For each model it starts one
``torchrun --nproc-per-node 2`` launch (imports and the model build happen once per model) whose ranks
time, in order: the plain pipeline on each GPU alone (the 1-GPU baseline), the same with
``xcfg.parallelize`` applied to a group of one (its overhead), a minimal seed-style split/gather wrapper on
2 GPUs, and xcfg on 2 GPUs; ``--compile`` adds ``torch.compile``d variants. ``_worker.py`` says how each
phase is timed.

    python benchmarks/run.py --cpu                      # 2 gloo ranks, tiny configs, seconds (what CI runs)
    python benchmarks/run.py cogvideox sd3 --out DIR    # full size on 2 GPUs (benchmarks/gpu.sh on a lent machine)
    python benchmarks/run.py --merge A/results.json B/results.json --out benchmarks/results
    python benchmarks/run.py cogvideox --nproc 8 --phases plain_1gpu --layouts cfg2,u2,cfg2xu2,u4,cfg2xu4,u8
    python benchmarks/run.py wan --cpu --nproc 4 --phases plain_1gpu --layouts cfg2,cfg2xu2   # CPU smoke

It writes ``results.json`` (every number, the card, the versions and the exact command), ``results.md``
(the table), ``speedup.png`` and ``README.md`` into ``--out`` after every launch, so a run stopped by
``--time-limit`` keeps what it measured, and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _report  # noqa: E402

DEFAULT_MODELS = ("cogvideox", "mochi", "sd3.5-large", "sd3")
PHASES = ("plain_1gpu", "xcfg_1gpu", "seed_2gpu", "xcfg_2gpu", "compiled_1gpu", "compiled_xcfg_2gpu")
"""Every phase, in the order they run (``_worker.py`` says what each one is)."""
MIN_LAUNCH_S = 45.0
"""Below this much time left, the next launch is skipped instead of started (imports and a build alone take that)."""
STOP_MARGIN_S = 30.0
"""Kept free of launches at the end of ``--time-limit``: stopping one (SIGTERM, then SIGKILL) and writing the files."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Time diffusers pipelines on 1 GPU and on 2 GPUs with xcfg, in one invocation.",
    )
    p.add_argument("models", nargs="*", help=f"example names (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--cpu", action="store_true", help="2 gloo CPU ranks, tiny configs, 3 steps: a smoke test in seconds")
    p.add_argument("--out", help="output folder (default: benchmarks/results, or a new temporary folder with --cpu)")
    p.add_argument("--steps", type=int, help="steps of each timed call (default: 10 for video models, 30 for image "
                   "models, 3 with --cpu); the median is over the steps-1 intervals after the first step")
    p.add_argument("--warmup-steps", type=int, help="steps of each warm-up call (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=2, help="ranks per launch (default: 2)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd transformers: 1 GPU plain vs 2 "
                   "GPUs xcfg (the phases compiled_1gpu and compiled_xcfg_2gpu)")
    p.add_argument("--phases", type=_phases, help="comma-separated phases to time, of: " + ", ".join(PHASES)
                   + " (default: the first four, and the compiled ones with --compile; plain_1gpu always runs: it "
                   "is the reference)")
    p.add_argument("--layouts", type=_layouts, help="comma-separated layouts to time after the phases, each on the "
                   "first ranks of the launch (the other ranks run copies of it): " + ", ".join(LAYOUTS)
                   + " (cfg2 = 2 GPUs of CFG parallelism, u4 = Ulysses 4, r2 = ring 2, cfg2xu4 = both on 8); the "
                   "1-GPU baseline is plain_1gpu. Use --nproc at least the largest layout")
    p.add_argument("--attention-backend", help="diffusers attention backend for the --layouts phases (ring layouts "
                   "need one with a log-sum-exp: _native_cudnn, flash); default: diffusers' active backend (native)")
    p.add_argument("--compile-mode", help="torch.compile mode for --compile (default: torch's default)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole invocation: a launch still running then is "
                   "stopped and the models not started are skipped; the files are written either way")
    p.add_argument("--one-launch", action=argparse.BooleanOptionalAction, default=None,
                   help="all models in one torchrun launch (default: with --cpu) instead of one launch per model")
    p.add_argument("--merge", nargs="+", metavar="RESULTS",
                   help="combine the results.json files (or folders holding one) of several invocations into --out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--raw", help=argparse.SUPPRESS)
    return p


LAYOUTS = ("cfg2", "u2", "r2", "cfg2xu2", "cfg2xr2", "u4", "r4", "cfg2xu4", "cfg2xr2xu2", "u8")
"""Layouts ``--layouts`` knows: ``cfg<n>``, ``r<n>`` (ring) and ``u<n>`` (Ulysses) joined by ``x``."""


def layout_degrees(name: str) -> dict[str, int]:
    """``"cfg2xu4"`` -> ``{"cfg": 2, "ring": 1, "ulysses": 4}``."""
    degrees = {"cfg": 1, "ring": 1, "ulysses": 1}
    for part in name.split("x"):
        for prefix, key in (("cfg", "cfg"), ("r", "ring"), ("u", "ulysses")):
            if part.startswith(prefix) and part[len(prefix):].isdigit():
                degrees[key] = int(part[len(prefix):])
                break
        else:
            raise argparse.ArgumentTypeError(f"unknown layout part {part!r} in {name!r}: use cfg<n>, r<n>, u<n> joined by x")
    return degrees


def _layouts(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        layout_degrees(name)
    return names


def _phases(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PHASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.phases is None:
        args.phases = list(PHASES)[: 6 if args.compile else 4]
    elif args.compile:
        args.phases += [p for p in ("compiled_1gpu", "compiled_xcfg_2gpu") if p not in args.phases]
    if args.worker:
        import _worker

        return _worker.main(args)
    if args.merge:
        return merge(args)
    return run(args, argv)


# -- the parent: launch, collect, report ------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str]) -> int:
    models = list(args.models or DEFAULT_MODELS)
    started = time.monotonic()
    deadline = started + args.time_limit if args.time_limit else None
    out = Path(args.out) if args.out else (
        Path(tempfile.mkdtemp(prefix="xcfg-bench-cpu-")) if args.cpu else ROOT / "benchmarks" / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    if args.layouts:
        largest = max(_product(layout_degrees(n)) for n in args.layouts)
        if largest > args.nproc:
            print(f"bench: the layout of {largest} ranks needs --nproc {largest} or more (got {args.nproc})", file=sys.stderr)
            return 2
    if not args.cpu:
        import torch

        if torch.cuda.device_count() < args.nproc:
            print(f"bench: {args.nproc} GPUs needed, {torch.cuda.device_count()} found; use --cpu for the CPU smoke test",
                  file=sys.stderr)
            return 2
    one_launch = args.cpu if args.one_launch is None else args.one_launch
    groups = [models] if one_launch else [[m] for m in models]
    meta = {
        "command": shlex.join([Path(sys.executable).name, _script_path(), *argv]),
        "launcher": os.environ.get("XCFG_BENCH_LAUNCHER"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu" if args.cpu else "gpu",
        "environment": _light_environment(),
    }
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="xcfg-bench-raw-") as raw:
        for group in groups:
            left = None if deadline is None else deadline - time.monotonic() - STOP_MARGIN_S
            if left is not None and left < MIN_LAUNCH_S:
                for name in group:
                    records[name] = {"example": name, "status": "skipped",
                                     "reason": f"--time-limit: {left:.0f} s left, fewer than {MIN_LAUNCH_S:.0f}"}
                continue
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                       str(HERE / "run.py"), "--worker", "--raw", raw, *_passthrough(args), *group]
            print(f"bench: launching {' '.join(group)} on {args.nproc} ranks", flush=True)
            began = time.monotonic()
            rc, tail, timed_out = _launch(command, _env(args.cpu), left)
            seconds = time.monotonic() - began
            for name in group:
                path = Path(raw) / f"{name}.json"
                record = json.loads(path.read_text()) if path.exists() else {"example": name, "phases": {}}
                if record.pop("complete", False):
                    record["status"] = "ok"
                else:
                    record["status"] = "timed out" if timed_out else "failed"
                    record["reason"] = (f"stopped by --time-limit after {seconds:.0f} s" if timed_out
                                        else f"launch exited with code {rc}")
                    record["log_tail"] = tail[-40:]
                record["launch_s"] = seconds
                records[name] = record
                if "environment" in record:
                    meta["environment"] = record.pop("environment")
            _write(out, meta, [records[m] for m in models if m in records])
    results = _write(out, meta, [records[m] for m in models if m in records])
    print(f"bench: wrote {out / 'results.json'}, results.md, speedup.png, README.md "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    print()
    print(_report.console(results), flush=True)
    return 0 if all(r.get("status") == "ok" for r in results["models"]) else 1


def _product(degrees: dict[str, int]) -> int:
    return degrees["cfg"] * degrees["ring"] * degrees["ulysses"]


def _script_path() -> str:
    try:
        return os.path.relpath(Path(sys.argv[0]).resolve(), Path.cwd())
    except ValueError:
        return sys.argv[0]


def _passthrough(args: argparse.Namespace) -> list[str]:
    extra = ["--seed", str(args.seed)]
    if args.cpu:
        extra.append("--cpu")
    if args.steps is not None:
        extra += ["--steps", str(args.steps)]
    if args.warmup_steps is not None:
        extra += ["--warmup-steps", str(args.warmup_steps)]
    extra += ["--phases", ",".join(args.phases)]
    if args.layouts:
        extra += ["--layouts", ",".join(args.layouts)]
    if args.attention_backend:
        extra += ["--attention-backend", args.attention_backend]
    if args.compile_mode:
        extra += ["--compile-mode", args.compile_mode]
    return extra


def _env(cpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    # the checkout's xcfg and xcfg_plugins, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    # NVLink multicast stays off on the lent machines; keep whatever the machine sets
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    env.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = "1"
    else:
        env.setdefault("OMP_NUM_THREADS", "4")
    return env


def _launch(command: list[str], env: dict[str, str], timeout: float | None) -> tuple[int | None, list[str], bool]:
    """Run one torchrun launch, echoing its output; stop its process group at ``timeout``."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    tail: deque[str] = deque(maxlen=200)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        rc: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
        rc = proc.returncode
    reader.join(timeout=10)
    return rc, list(tail), timed_out


def _stop(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # the launch's own process group: torchrun and its ranks
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _light_environment() -> dict[str, Any]:
    """Versions without importing torch (the workers report the card and the rest)."""
    from importlib import metadata

    env: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in ("torch", "diffusers", "xcfg"):
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    return env


def _write(out: Path, meta: dict[str, Any], models: list[dict[str, Any]]) -> dict[str, Any]:
    run_meta = dict(meta)
    results = {"schema": 1, "runs": [run_meta], "models": [dict(m, run=0) for m in models]}
    _report.write_all(out, results)
    return results


# -- merging several invocations (one per device call) ----------------------------------------------


def merge(args: argparse.Namespace) -> int:
    """Combine several results.json files into one set of files.

    A model measured in several files keeps the phases of the first file that has them; phases it
    did not have yet (the compiled ones, say) come from later files, each with the 1-GPU step time of
    its own launch as ``reference_step_median_s``, so every speedup compares phases of one launch.
    """
    runs: list[dict[str, Any]] = []
    models: dict[str, dict[str, Any]] = {}
    for item in args.merge:
        path = Path(item)
        path = path / "results.json" if path.is_dir() else path
        data = json.loads(path.read_text())
        offset = len(runs)
        runs.extend(data["runs"])
        for model in data["models"]:
            run = model.get("run", 0) + offset
            phases = {k: dict(v, run=run) for k, v in model["phases"].items()}
            if model["example"] not in models:
                models[model["example"]] = dict(model, run=run, phases=phases)
                continue
            kept = models[model["example"]]["phases"]
            reference = phases.get("plain_1gpu", {}).get("step_median_s")
            for key, phase in phases.items():
                if key not in kept:
                    kept[key] = dict(phase, reference_step_median_s=reference)
    used = sorted({m["run"] for m in models.values()} | {p["run"] for m in models.values() for p in m["phases"].values()})
    renumber = {old: new for new, old in enumerate(used)}
    for model in models.values():
        model["run"] = renumber[model["run"]]
        for phase in model["phases"].values():
            phase["run"] = renumber[phase["run"]]
    results = {"schema": 1, "runs": [runs[i] for i in used], "models": list(models.values())}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    _report.write_all(out, results)
    print(f"bench: merged {len(args.merge)} result files into {out}")
    print()
    print(_report.console(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
