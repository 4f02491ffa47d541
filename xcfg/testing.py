"""Helpers for testing CFG parallelism on CPU ranks: real processes, gloo, and a batch counter.

A plugin author checks a new model in three lines::

    from xcfg.testing import check_example
    report = check_example("my-model")      # 2 gloo ranks vs 1 process, on the CPU
    assert report.ok, report

:func:`run_ranks` starts real processes (no mocks of ``torch.distributed``), each with a gloo default
process group, and fails instead of hanging when a rank does not finish within ``timeout``.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "BatchCounter",
    "ExampleReport",
    "RanksFailed",
    "capture_notices",
    "check_example",
    "relative_error",
    "run_ranks",
]

_PRELOAD = ["torch", "transformers", "diffusers", "xcfg"]


class RanksFailed(RuntimeError):
    """One or more ranks raised or did not finish in time; the message holds each rank's traceback.

    Example:
        >>> from xcfg.testing import RanksFailed
        >>> issubclass(RanksFailed, RuntimeError)
        True
    """


def _worker(fn: Callable[..., Any], rank: int, world_size: int, store: str, args: tuple[Any, ...],
            env: dict[str, str], conn: Any, timeout_s: float) -> None:
    os.environ.update(env)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        try:
            result = ("ok", fn(rank, world_size, *args))
            # leave together: a rank that tears gloo down while a peer still holds it can abort the peer
            with contextlib.suppress(Exception):
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=30), wait_all_ranks=True)
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    except BaseException:
        result = ("error", traceback.format_exc())
    try:
        conn.send(result)
    except Exception:
        conn.send(("error", "result could not be pickled:\n" + traceback.format_exc()))
    conn.close()


def run_ranks(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined by a gloo group.

    ``fn`` must be importable (a module-level function); its return value comes back pickled. The
    processes start from a fork server that has already imported torch and diffusers.

    Args:
        fn: the per-rank function; the default process group is initialized when it starts.
        *args: passed to ``fn`` after the rank and world size.
        world_size: the number of processes.
        timeout: seconds for the whole run; a rank still running then is killed and the call fails.
        env: extra environment variables for the ranks.

    Returns:
        Each rank's return value, in rank order.

    Raises:
        RanksFailed: a rank raised (its traceback is in the message) or the timeout passed.

    Example:
        >>> from xcfg.testing import run_ranks
        >>> run_ranks(_example_rank_fn, world_size=2)   # doctest: +SKIP
        [0, 1]
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    with tempfile.TemporaryDirectory(prefix="xcfg-ranks-") as tmp:
        store = os.path.join(tmp, "store")
        pipes, procs = [], []
        for rank in range(world_size):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker, args=(fn, rank, world_size, store, args, dict(env or {}), send, timeout), daemon=True
            )
            proc.start()
            send.close()
            pipes.append(receive)
            procs.append(proc)
        results: list[Any] = [None] * world_size
        problems: list[str] = []
        deadline = _now() + timeout
        for rank, (receive, proc) in enumerate(zip(pipes, procs)):
            left = max(0.0, deadline - _now())
            if receive.poll(left):
                try:
                    status, value = receive.recv()
                except EOFError:
                    status, value = "error", f"rank {rank} exited with code {proc.exitcode} before reporting"
            else:
                status, value = "error", f"rank {rank} did not finish within {timeout:.0f} s (hang?)"
            if status == "ok":
                results[rank] = value
            else:
                problems.append(f"--- rank {rank} ---\n{value}")
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if problems:
            raise RanksFailed("\n".join(problems))
        return results


def _now() -> float:
    import time

    return time.monotonic()


class BatchCounter:
    """Records the batch that really reaches a model's layers, one entry per forward call.

    The wrapper sits inside ``forward``, so a hook on the model itself sees the caller's batch; this
    counter hooks the model's direct children and records the leading size of the first tensor the
    first child receives in each call: the batch this rank computed.

    Example:
        >>> import torch
        >>> from xcfg.testing import BatchCounter
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3))
        >>> with BatchCounter(model) as counter:
        ...     _ = model(torch.ones(4, 3))
        >>> counter.batches
        [4]
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.batches: list[int] = []
        self._pending = False
        self._handles: list[Any] = []

    def __enter__(self) -> BatchCounter:
        def start(*_: Any) -> None:
            self._pending = True

        def child(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not self._pending:
                return
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    self.batches.append(int(value.shape[0]))
                    self._pending = False
                    return

        self._handles.append(self.model.register_forward_pre_hook(start))
        for module in self.model.children():
            self._handles.append(module.register_forward_pre_hook(child, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class Notices(list):
    """The notices :func:`capture_notices` collected (strings), with ``where``: each one's source file, the
    user's line that led to it."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []


@contextlib.contextmanager
def capture_notices() -> Any:
    """Collect the notices xcfg logs on this rank (every rank's, not only rank 0's) into a list of strings.

    xcfg's warnings go through the ``"xcfg"`` logger, on global rank 0 only and once per process for each
    text; inside this block every rank logs, and a text seen before the block is logged again.

    Example:
        >>> from xcfg.testing import capture_notices
        >>> from xcfg._notices import warn_once
        >>> with capture_notices() as notices:
        ...     _ = warn_once("xcfg: an example notice")
        >>> notices
        ['xcfg: an example notice']
    """
    import logging

    from . import _log

    messages = Notices()

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())
            messages.where.append(record.pathname)

    handler = _Collect(level=logging.WARNING)
    logger = _log.get_logger()
    previous = _log._all_ranks
    with _log._seen_lock:
        seen = set(_log._seen)
        _log._seen.clear()
    _log.log_all_ranks(True)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        _log.log_all_ranks(previous)
        with _log._seen_lock:
            _log._seen.update(seen)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64.

    Example:
        >>> import torch
        >>> from xcfg.testing import relative_error
        >>> relative_error(torch.ones(4), torch.ones(4))
        0.0
    """
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


@dataclass
class ExampleReport:
    """What :func:`check_example` found, per rank.

    Attributes:
        name: the example checked.
        errors: relative error of each rank's parallel output against the 1-process output.
        single_batches: batches the model computed per call in the 1-process run.
        parallel_batches: batches each rank computed per call in the parallel run.
        tolerance: the largest relative error accepted.
        style: the CFG style of the example's first denoiser (``"batched"`` or ``"two_call"``).
        predictions: two-call style: how many uncond calls each rank predicted (each saves one call).
        steps: the pipeline's ``num_inference_steps``; with two calls per step, every step after the
            first must have been predicted.
        split: how many denoiser calls each rank split (batched) or ran ahead (two-call).
        expect_split: whether the call should split anything (``False`` when the overrides turn CFG off).

    Example:
        >>> from xcfg.testing import ExampleReport
        >>> report = ExampleReport(name="toy", errors=[2e-7, 2e-7], single_batches=[2, 2],
        ...                        parallel_batches=[[1, 1], [1, 1]])
        >>> report.ok
        True
    """

    name: str
    errors: list[float]
    single_batches: list[int]
    parallel_batches: list[list[int]]
    tolerance: float = 1e-4
    style: str = "batched"
    predictions: list[int] = field(default_factory=list)
    steps: int | None = None
    split: list[int] = field(default_factory=list)
    expect_split: bool = True

    @property
    def ok(self) -> bool:
        """Equal to one process within tolerance, and every rank computed only its share.

        Something was split unless the overrides turned CFG off. Batched style: every rank computed half
        (1/size) of every batch that divides, and every other batch whole. Two-call style: every prediction saved each rank one call, and when the pipeline
        made two calls per step, there were predictions.
        """
        if any(e > self.tolerance for e in self.errors):
            return False
        if self.expect_split and self.split and not all(self.split):
            return False  # a spec that splits nothing (a wrong style, undeclared inputs) gains nothing
        if self.style == "two_call":
            saved = [len(self.single_batches) - len(b) for b in self.parallel_batches]
            pairs = self.steps is not None and len(self.single_batches) == 2 * self.steps
            return saved == self.predictions and (not pairs or all(p == self.steps - 1 for p in self.predictions))
        size = len(self.parallel_batches)
        for batches in self.parallel_batches:
            expected = [b // size if b % size == 0 else b for b in self.single_batches]
            if batches != expected:
                return False
        return True


def _check_example_rank(
    rank: int, world_size: int, name: str, overrides: dict[str, Any], plugins: tuple[str, ...] = ()
) -> dict[str, Any]:
    import importlib

    import xcfg

    for module in plugins:  # plugins the caller registered at run time, registered again in this process
        xcfg.register_plugin(importlib.import_module(module), name=module)
    run = xcfg.build_example(name, size="tiny")
    kwargs = {**run.kwargs, **overrides, "output_type": "pt"}
    with BatchCounter(_first_denoiser(run.pipe)) as single:
        expected = getattr(run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)), run.output)
    handle = xcfg.parallelize(run.pipe, true_cfg=float(kwargs.get("true_cfg_scale", 1.0)) > 1.0)
    with BatchCounter(_first_denoiser(run.pipe)) as parallel:
        actual = getattr(run.pipe(**kwargs, generator=torch.Generator().manual_seed(7)), run.output)
    handle.remove()
    first = handle.wrapped[0] if handle.wrapped else None
    return {
        "error": relative_error(actual, expected),
        "single": single.batches,
        "parallel": parallel.batches,
        "style": first.spec.style.value if first else "batched",
        "predictions": getattr(first._hook, "predictions", 0) if first else 0,
        "steps": kwargs.get("num_inference_steps"),
        "split": sum(w.style.stats.split for w in handle.wrapped),
    }


def _first_denoiser(pipe: Any) -> torch.nn.Module:
    from ._parallelize import DENOISER_ATTRIBUTES

    for name in DENOISER_ATTRIBUTES:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{type(pipe).__name__} has no denoiser")


def check_example(
    name: str, *, world_size: int = 2, timeout: float = 300.0, plugins: tuple[str, ...] | list[str] = (), **overrides: Any
) -> ExampleReport:
    """Run a registered example on ``world_size`` gloo CPU ranks and compare with one process.

    Each rank first runs the plain pipeline (the 1-process reference), then the parallelized one,
    counting the batch its denoiser computed in each call.

    Args:
        name: the example's name.
        world_size: ranks to run on.
        timeout: seconds before the check fails as a hang.
        plugins: importable names of plugin modules to register in every rank first, for a plugin that
            is not installed through an entry point (the ranks are fresh processes: a plugin registered
            at run time in the calling process is not there).
        **overrides: pipeline-call arguments to change (``guidance_scale=1.0``, ``num_inference_steps=2``).

    Returns:
        An :class:`ExampleReport`; ``report.ok`` says whether both checks passed.

    Example:
        >>> from xcfg.testing import check_example
        >>> check_example("cogvideox").ok     # doctest: +SKIP
        True
    """
    results = run_ranks(_check_example_rank, name, overrides, tuple(plugins), world_size=world_size, timeout=timeout)
    return ExampleReport(
        name=name,
        errors=[r["error"] for r in results],
        single_batches=results[0]["single"],
        parallel_batches=[r["parallel"] for r in results],
        style=results[0]["style"],
        predictions=[r["predictions"] for r in results],
        steps=results[0]["steps"],
        split=[r["split"] for r in results],
        expect_split=_cfg_on(overrides),
    )


def _cfg_on(overrides: dict[str, Any]) -> bool:
    """Whether the call keeps CFG on, as far as the overrides say."""
    return all(float(overrides.get(name, 2.0)) > 1.0 for name in ("guidance_scale", "true_cfg_scale"))
