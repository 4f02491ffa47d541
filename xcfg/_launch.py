"""``xcfg.launch(factory, nproc=2)``: one process drives the workers, no torchrun.

The caller (a notebook, a service, a plain script) starts ``nproc`` worker processes with torch's own
``torch.multiprocessing.start_processes``. Each worker joins a process group (NCCL on its own GPU, or gloo
on the CPU), builds the pipeline with the caller's factory, applies :func:`xcfg.parallelize` and serves
calls. The caller keeps a :class:`Launched` proxy:

- a call is pickled once and the same bytes go to every worker, so the ranks get identical arguments by
  construction: tensors travel on the CPU and arrive on the worker's device; a ``torch.Generator``
  travels as its seed and is recreated on each worker;
- calls run one at a time, in order; rank 0's result comes back with its tensors on the CPU;
- each worker answers through its own pipe, and the caller waits on those pipes and on the processes'
  sentinels together, so an answer, a death and the timeout all end the same wait.

Wire protocol (each message a pickled tuple; a command is a header message followed by a payload message)::

    caller -> worker   header (call_id, kind)        kind: "call" | "run" | "close"
                       payload (method_or_fn, args, kwargs)
    worker -> caller   ("ready", rank, info) | ("failed", rank, error)    once, after the build
                       ("bar", call_id, event, value)                     rank 0 only: its progress bar
                       ("done", call_id, rank, ok, value_or_error)        once per call and rank
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import inspect
import itertools
import multiprocessing
import multiprocessing.util
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from ._errors import LaunchError, RankFailedError, SetupError, WorkerDiedError, WorkerError, WorkerTimeoutError
from ._tree import tree_map

__all__ = ["DEFAULT_LAUNCH_TIMEOUT", "Launched", "launch"]

DEFAULT_LAUNCH_TIMEOUT = 600.0
"""Seconds the caller waits for the workers: for the build, and for each message during a call."""

CLOSE_GRACE_S = 10.0
"""Seconds :meth:`Launched.close` gives idle workers to leave by themselves before they are terminated."""

_START_METHODS = ("spawn", "forkserver")
_FORKSERVER_PRELOAD = ["torch", "transformers", "diffusers", "xcfg"]
_PROTOCOL = pickle.HIGHEST_PROTOCOL


# -- the public entry point --------------------------------------------------------------------------


def launch(
    factory: Callable[[], Any] | str,
    nproc: int = 2,
    *,
    timeout: float | datetime.timedelta = DEFAULT_LAUNCH_TIMEOUT,
    backend: str | None = None,
    device: str | torch.device | Sequence[str | torch.device] | None = None,
    start_method: str = "spawn",
    **options: Any,
) -> Launched:
    """Start ``nproc`` worker processes that each build the pipeline and parallelize it; return a proxy.

    Each worker initializes the default process group (NCCL and ``cuda:rank`` where CUDA is available,
    gloo and the CPU otherwise), calls ``factory()``, applies ``xcfg.parallelize(pipe, **options)`` and
    waits for calls. Calling the returned :class:`Launched` runs the pipeline on every worker with the
    same arguments and returns rank 0's result. No torchrun, no ``if rank == 0`` in your code.

    The factory runs in the worker, where ``xcfg.init_distributed()`` returns the worker's device (the
    process group is already up), so the factory of a torchrun script works unchanged::

        def make_pipe():
            device = xcfg.init_distributed()
            return CogVideoXPipeline.from_pretrained(..., torch_dtype=torch.bfloat16).to(device)

    Args:
        factory: a picklable callable with no arguments that returns the pipeline (a module-level
            function or a ``functools.partial`` of one), or a ``"module:function"`` path. Functions
            defined in a notebook cannot be sent to a worker: put them in a module.
        nproc: the number of workers (the CFG degree: 2 for the uncond/cond pair).
        timeout: seconds (or a ``timedelta``) bounding every wait: the workers' start and build, and,
            during a call, the silence between two messages from the workers (each progress-bar step is
            one). Also the workers' process-group timeout. A wait that runs out closes the pool.
        backend: the process-group backend; default NCCL for CUDA devices, gloo for the CPU.
        device: ``"cuda"`` (``cuda:0`` .. ``cuda:nproc-1``), ``"cpu"``, or one device per worker
            (``["cuda:2", "cuda:3"]``); default CUDA when available.
        start_method: ``"spawn"`` (fresh interpreters) or ``"forkserver"`` (forked from a server that
            has imported torch and diffusers once: faster when pools are started repeatedly).
        **options: passed to :func:`xcfg.parallelize` in every worker (``check_every``, ``true_cfg``,
            ``split_vae``, ...); they must be picklable.

    Returns:
        A :class:`Launched` proxy; close it with :meth:`Launched.close` or a ``with`` block.

    Raises:
        SetupError: before any worker starts: ``nproc`` larger than the GPUs, a factory or options that
            cannot be pickled, a ``"module:function"`` whose module does not exist, a bad argument.
        WorkerError: the factory or ``parallelize`` raised in a worker (the workers are stopped).
        WorkerDiedError: a worker exited while starting.
        WorkerTimeoutError: the workers were not ready within ``timeout``.

    Example:
        >>> import xcfg
        >>> pipe = xcfg.launch("my_models:make_pipe", nproc=2)              # doctest: +SKIP
        >>> video = pipe(prompt="a panda playing a guitar", guidance_scale=6.0).frames[0]  # doctest: +SKIP
        >>> pipe.close()                                                     # doctest: +SKIP
    """
    seconds = _seconds(timeout)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise SetupError(f"xcfg.launch: nproc must be a positive integer, got {nproc!r}")
    if start_method not in _START_METHODS:
        raise SetupError(f"xcfg.launch: start_method must be one of {_START_METHODS}, got {start_method!r}")
    devices = _devices(device, nproc)
    if backend is None:
        backend = "nccl" if devices[0].type == "cuda" else "gloo"
    if devices[0].type == "cpu" and "nccl" in backend and "gloo" not in backend:
        raise SetupError(f"xcfg.launch: backend {backend!r} cannot carry CPU tensors; use backend='gloo' with device='cpu'")
    _check_options(options)
    spec = _WorkerSpec(
        factory=_pickled_factory(factory),
        options=_pickled(options, "the parallelize options"),
        devices=tuple(str(d) for d in devices),
        backend=backend,
        timeout=seconds,
        threads=_threads_per_worker(devices, nproc),
        store="",
    )
    return Launched(_Pool.start(spec, devices, start_method, _factory_name(factory)))


class Launched:
    """A pipeline running on the worker processes :func:`xcfg.launch` started: call it like the pipeline.

    A call is sent to every worker (its arguments pickled once, the same bytes to each), runs there with
    CFG split across the workers, and returns rank 0's result, tensors on the CPU. Calls are serialized:
    from several threads they run one at a time. A ``torch.Generator`` argument is replaced by its
    ``initial_seed()``, from which every worker recreates one (on the CPU for a CPU generator, on its own
    device for a CUDA one), so a call is reproducible from its seed; the caller's generator is not advanced.

    Failures come back as exceptions: a worker that raises gives :class:`xcfg.WorkerError` naming the
    rank and its error, and the pool stays usable; a worker that dies gives :class:`xcfg.WorkerDiedError`
    and the pool closes itself; a silence longer than the timeout gives :class:`xcfg.WorkerTimeoutError`
    and the pool closes too. :meth:`close`, a ``with`` block, garbage collection of the proxy and the
    exit of the interpreter stop the workers.

    The progress bar is rank 0's, forwarded: each step updates a ``tqdm.auto`` bar in the calling
    process (a widget in a notebook); the other ranks' bars are off.

    Attributes:
        devices: each worker's device, by rank.
        pids: each worker's process id, by rank.

    Example:
        >>> import xcfg
        >>> with xcfg.launch("my_models:make_pipe", nproc=2, device="cpu") as pipe:   # doctest: +SKIP
        ...     frames = pipe(num_inference_steps=4, guidance_scale=6.0).frames[0]
        ...     batches = pipe.run_on_workers("transformer.config.num_layers")
    """

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self.devices: list[torch.device] = list(pool.devices)
        self.pids: list[int] = list(pool.pids)
        self._finalizer = weakref.finalize(self, pool.shutdown, "the proxy was garbage-collected", 2.0)
        self._finalizer.atexit = False  # at exit, the hook of _register closes every pool, before multiprocessing joins them

    @property
    def nproc(self) -> int:
        """The number of workers."""
        return len(self.pids)

    @property
    def closed(self) -> bool:
        """Whether the workers are gone (closed by :meth:`close`, or after a death or a timeout)."""
        return self._pool.closed_reason is not None

    @property
    def timeout(self) -> float:
        """How long, in seconds, a wait for the workers may last (during a call, between two messages); settable."""
        return self._pool.timeout

    @timeout.setter
    def timeout(self, seconds: float | datetime.timedelta) -> None:
        self._pool.timeout = _seconds(seconds)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the pipeline on every worker with these arguments; return rank 0's result."""
        return self._pool.request("call", ("__call__", args, kwargs))[0]

    def run_on_workers(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(pipe, *args, **kwargs)`` on every worker at once; return each rank's result, by rank.

        For inspection and set-up: read a counter, enable the VAE's tiling, swap a scheduler. ``fn`` is a
        picklable callable (a module-level function), or the dotted name of something on the pipeline:
        ``"vae.enable_tiling"`` calls ``pipe.vae.enable_tiling(*args, **kwargs)``, and a name that is not
        callable returns its value. ``torch.distributed`` is initialized in the workers, so ``fn`` may
        use collectives (every rank runs it).

        Raises:
            WorkerError: ``fn`` raised on some rank (the pool stays usable).

        Example:
            >>> pipe.run_on_workers("vae.enable_tiling")                 # doctest: +SKIP
            [None, None]
            >>> pipe.run_on_workers("transformer.config.num_layers")     # doctest: +SKIP
            [2, 2]
        """
        if not (callable(fn) or isinstance(fn, str)):
            raise TypeError(f"run_on_workers needs a callable or a dotted attribute name, got {type(fn).__name__}")
        return self._pool.request("run", (fn, args, kwargs))

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the progress bar shown in this process (``tqdm`` keywords: ``disable=True``,
        ``desc=...``, ``leave=False``); they override what the factory set on the workers' pipeline."""
        self._pool.bar_config.update(kwargs)

    def close(self) -> None:
        """Stop the workers. Idempotent; no process is left behind.

        Idle workers are asked to leave and get ``CLOSE_GRACE_S`` seconds to do so; workers still busy
        (a call from another thread, which then raises :class:`xcfg.LaunchError`) are terminated at once,
        and any worker that outlasts its termination is killed.
        """
        self._finalizer.detach()
        self._pool.shutdown("closed by close()", CLOSE_GRACE_S)

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"closed: {self._pool.closed_reason}" if self.closed else "open"
        devices = ", ".join(map(str, self.devices))
        return f"Launched({self._pool.name}, {self.nproc} workers on {devices}, pids {self.pids}, {state})"


# -- validation in the caller, before any process starts ------------------------------------------------


def _seconds(timeout: float | datetime.timedelta) -> float:
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
    if not seconds > 0:
        raise SetupError(f"xcfg.launch: timeout must be positive, got {timeout!r}")
    return seconds


def _devices(device: Any, nproc: int) -> list[torch.device]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, (str, torch.device)):
        one = torch.device(device)
        if one.type == "cpu":
            return [torch.device("cpu")] * nproc
        if one.index is not None:
            raise SetupError(
                f"xcfg.launch: device={str(one)!r} names one device for {nproc} workers; pass device={one.type!r} "
                f"({one.type}:0 .. {one.type}:{nproc - 1}) or one device per worker, e.g. device=['cuda:2', 'cuda:3']"
            )
        devices = [torch.device(one.type, i) for i in range(nproc)]
    else:
        devices = [torch.device(d) for d in device]
        if len(devices) != nproc:
            raise SetupError(f"xcfg.launch: {len(devices)} devices given for nproc={nproc}; give one per worker")
        if len({d.type for d in devices}) != 1:
            raise SetupError(f"xcfg.launch: the workers' devices must be of one type, got {[str(d) for d in devices]}")
        if devices[0].type != "cpu":
            devices = [d if d.index is not None else torch.device(d.type, i) for i, d in enumerate(devices)]
            if len({d.index for d in devices}) != nproc:
                raise SetupError(f"xcfg.launch: two workers on one device: {[str(d) for d in devices]}")
    kind = devices[0].type
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = [str(d) for d in devices if d.index >= count]
        if missing:
            raise SetupError(
                f"xcfg.launch: {nproc} workers need the GPUs {[str(d) for d in devices]}, but this machine has "
                f"{count} GPU{'s' if count != 1 else ''} ({', '.join(missing)} missing). Use nproc={max(count, 1)} or "
                "fewer, or device='cpu' for gloo workers on the CPU."
            )
    elif kind != "cpu":
        raise SetupError(f"xcfg.launch: device type {kind!r} is not supported; use 'cuda' or 'cpu'")
    return devices


def _check_options(options: dict[str, Any]) -> None:
    from ._parallelize import parallelize

    try:
        inspect.signature(parallelize).bind(None, **options)
    except TypeError as err:
        raise SetupError(
            f"xcfg.launch: the options are passed to xcfg.parallelize, which does not take them ({err}); "
            f"launch's own keywords are nproc, timeout, backend, device and start_method"
        ) from err


def _threads_per_worker(devices: list[torch.device], nproc: int) -> int | None:
    """CPU workers share the cores instead of each taking them all; GPU workers keep torch's default."""
    if devices[0].type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // nproc)


def _factory_name(factory: Any) -> str:
    if isinstance(factory, str):
        return factory
    target = getattr(factory, "func", factory)  # functools.partial
    return getattr(target, "__qualname__", None) or type(target).__name__


def _pickled_factory(factory: Any) -> bytes:
    if isinstance(factory, str):
        module, sep, name = factory.partition(":")
        if not sep or not module or not all(part.isidentifier() for part in name.split(".")):
            raise SetupError(f"xcfg.launch: a factory path is 'module:function', got {factory!r}")
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise SetupError(f"xcfg.launch: the factory {factory!r} names no importable module {module!r}")
        return pickle.dumps(factory, protocol=_PROTOCOL)
    if not callable(factory):
        raise SetupError(
            f"xcfg.launch: the factory must be a callable that returns the pipeline, or a 'module:function' path; "
            f"got {type(factory).__name__}"
        )
    return _pickled(factory, f"the factory {_factory_name(factory)!r}")


def _pickled(obj: Any, what: str) -> bytes:
    try:
        data = pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception as err:
        raise SetupError(
            f"xcfg.launch: {what} cannot be sent to the workers ({type(err).__name__}: {err}). Use a module-level "
            "function (or a functools.partial of one) or a 'module:function' path: lambdas and functions defined "
            "inside another function cannot be pickled."
        ) from err
    if b"__main__" in data and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise SetupError(
            f"xcfg.launch: {what} refers to something defined in this interactive session (a notebook or a "
            "REPL), which the workers cannot import. Move it into a module (a .py file next to the notebook) and "
            "pass it from there, or pass 'module:function'."
        )
    return data


# -- the pool: processes, pipes, and every wait -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _WorkerSpec:
    factory: bytes
    options: bytes
    devices: tuple[str, ...]
    backend: str
    timeout: float
    threads: int | None
    store: str


_live: set[_Pool] = set()
_exit_hook: Any = None


def _close_all_at_exit() -> None:
    for pool in list(_live):
        pool.shutdown("the calling process is exiting", 2.0)


def _register(pool: _Pool) -> None:
    # multiprocessing's exit handler (atexit in the main process, the end of _bootstrap in a process that
    # multiprocessing started) runs finalizers of priority >= 0 before it joins the child processes; run
    # later, it would wait forever for workers that wait for calls.
    global _exit_hook
    if _exit_hook is None:
        _exit_hook = multiprocessing.util.Finalize(None, _close_all_at_exit, exitpriority=100)
    _live.add(pool)


class _Pool:
    """The workers, their pipes and the waits on them; :class:`Launched` is its public face."""

    def __init__(self, context: Any, conns: list[Connection], devices: list[torch.device], tmp: str,
                 timeout: float, name: str) -> None:
        self.context = context  # torch.multiprocessing's ProcessContext
        self.conns = conns
        self.devices = devices
        self.pids = context.pids()
        self.tmp = tmp
        self.timeout = timeout
        self.name = name
        self.bar_config: dict[str, Any] = {}
        self.closed_reason: str | None = None
        self.lock = threading.RLock()
        self._shutdown_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._abandoned: dict[int, set[int]] = {}  # call id -> ranks whose answer is still to come

    @classmethod
    def start(cls, spec: _WorkerSpec, devices: list[torch.device], start_method: str, name: str) -> _Pool:
        import torch.multiprocessing as torch_mp

        tmp = tempfile.mkdtemp(prefix="xcfg-launch-")
        spec = dataclasses.replace(spec, store=os.path.join(tmp, "store"))
        ends = [multiprocessing.Pipe(duplex=True) for _ in devices]
        if start_method == "forkserver":  # takes effect when the fork server starts (once per process)
            multiprocessing.get_context("forkserver").set_forkserver_preload(_FORKSERVER_PRELOAD)
        try:
            context = torch_mp.start_processes(
                _worker_main, args=(len(devices), spec, [child for _, child in ends]), nprocs=len(devices),
                join=False, daemon=False, start_method=start_method,
            )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            for _, child in ends:
                child.close()
        pool = cls(context, [parent for parent, _ in ends], devices, tmp, spec.timeout, name)
        _register(pool)
        try:
            pool._wait_ready()
        except BaseException:
            pool.shutdown("the start failed", 1.0)
            raise
        return pool

    # -- requests ----------------------------------------------------------------------------------

    def request(self, kind: str, payload: tuple[Any, ...]) -> list[Any]:
        """Send one command to every worker and collect every rank's answer; rank 0's value first."""
        body = _pickled_call(payload)  # before the lock: an argument that cannot be pickled changes nothing
        with self.lock:
            self._check_open()
            self._drain_abandoned()
            call_id = next(self._ids)
            header = pickle.dumps((call_id, kind), protocol=_PROTOCOL)
            for rank, conn in enumerate(self.conns):
                try:
                    conn.send_bytes(header)
                    conn.send_bytes(body)
                except KeyboardInterrupt:
                    self.shutdown("interrupted while sending a call (the message may be cut)", 1.0)
                    raise
                except OSError:
                    self._died(rank, "while a call was being sent")
            return self._collect(call_id, "run" if kind == "run" else "call")

    def _collect(self, call_id: int, what: str) -> list[Any]:
        pending = set(range(len(self.conns)))
        values: dict[int, Any] = {}
        failures: dict[int, dict[str, Any]] = {}
        bar = _CallerBar(self.bar_config)
        try:
            while pending:
                try:
                    rank, message = self._receive(pending, f"during a {what}")
                except KeyboardInterrupt:
                    self._abandoned[call_id] = set(pending)
                    raise
                if message[1] != call_id:
                    continue
                if message[0] == "bar":
                    bar.handle(message[2], message[3])
                elif message[0] == "done":
                    _, _, rank, ok, value = message
                    pending.discard(rank)
                    (values if ok else failures)[rank] = value
        finally:
            bar.close()
        if failures:
            raise _worker_error(failures, what)
        return [values.get(rank) for rank in range(len(self.conns))]

    def _drain_abandoned(self) -> None:
        """Wait for the answers of calls the caller stopped waiting for (Ctrl-C), so they never mix with this one."""
        while self._abandoned:
            ranks = set().union(*self._abandoned.values())
            rank, message = self._receive(ranks, "finishing an interrupted call")
            if message[0] == "done" and message[1] in self._abandoned:
                left = self._abandoned[message[1]]
                left.discard(message[2])
                if not left:
                    del self._abandoned[message[1]]

    def _wait_ready(self) -> None:
        pending = set(range(len(self.conns)))
        while pending:
            rank, message = self._receive(pending, "while starting")
            if message[0] == "ready":
                pending.discard(rank)
            elif message[0] == "failed":
                error = _worker_error({rank: message[2]}, "build (the factory or parallelize)")
                self.shutdown(f"worker rank {rank} failed to start", 1.0)
                raise error

    def _receive(self, ranks: set[int], doing: str) -> tuple[int, tuple[Any, ...]]:
        """The next message from one of ``ranks``; a death or ``timeout`` seconds of silence closes the pool."""
        conns = {self.conns[r]: r for r in ranks}
        sentinels = {p.sentinel: r for r, p in enumerate(self.context.processes)}
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                message = (
                    f"xcfg.launch: no answer from worker rank{'s' if len(ranks) > 1 else ''} "
                    f"{', '.join(map(str, sorted(ranks)))} within {self.timeout:g} s {doing}; the pool is closed "
                    "(its workers are stopped). Raise launch(timeout=...) or proxy.timeout for slower work."
                )
                self.shutdown(f"timed out {doing}", 1.0)
                raise WorkerTimeoutError(message, rank=min(ranks))
            ready = wait([*conns, *sentinels], timeout=left)
            for item in ready:  # answers first: a worker may answer and then exit
                if item in conns:
                    rank = conns[item]
                    try:
                        data = item.recv_bytes()
                    except KeyboardInterrupt:
                        self.shutdown("interrupted while reading an answer (the message may be cut)", 1.0)
                        raise
                    except (EOFError, OSError):
                        self._died(rank, doing)
                    return rank, pickle.loads(data)
            for item in ready:
                if item in sentinels:
                    self._died(sentinels[item], doing)

    def _died(self, rank: int, doing: str) -> None:
        if self.closed_reason is not None:  # close() from another thread stopped the workers under this call
            raise LaunchError(f"xcfg.launch: the pool was closed ({self.closed_reason}) {doing}")
        process = self.context.processes[rank]
        process.join(5)
        detail = _exit_detail(process.exitcode, self.context.error_files[rank])
        if doing == "while starting" and process.exitcode == 1 and "\n" not in detail:
            detail += (
                " before it could run (see its output above). If the calling script has no "
                "`if __name__ == '__main__':` guard, a worker that imports it to find the factory runs it again"
            )
        message = (
            f"xcfg.launch: worker rank {rank} (pid {process.pid}) died {doing}: {detail}. The pool is closed; "
            "start a new one with xcfg.launch(...)."
        )
        self.shutdown(f"worker rank {rank} died", 1.0)
        raise WorkerDiedError(message, rank=rank, exitcode=process.exitcode)

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise LaunchError(
                f"xcfg.launch: this pool is closed ({self.closed_reason}); start a new one with xcfg.launch(...)"
            )

    # -- shutdown ----------------------------------------------------------------------------------

    def shutdown(self, reason: str, grace: float = CLOSE_GRACE_S) -> None:
        """Stop every worker: ask, wait ``grace`` seconds, terminate, kill. Idempotent; bounded."""
        with self._shutdown_lock:
            if self.closed_reason is not None:
                return
            self.closed_reason = reason
        _live.discard(self)
        # Idle workers are asked to leave. While another thread's call holds the pipes, a message could cut into
        # that call's: the workers are busy anyway, so they are terminated at once.
        idle = self.lock.acquire(blocking=False)
        if idle:
            try:
                close = pickle.dumps((0, "close"), protocol=_PROTOCOL)
                for conn in self.conns:
                    with contextlib.suppress(Exception):
                        conn.send_bytes(close)
                        conn.send_bytes(b"")
            finally:
                self.lock.release()
        processes = self.context.processes
        deadline = time.monotonic() + (grace if idle else 0.0)
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for signal_step in ("terminate", "kill"):
            alive = [p for p in processes if p.is_alive()]
            for process in alive:
                with contextlib.suppress(Exception):
                    getattr(process, signal_step)()
            for process in alive:
                process.join(5)
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()
        for path in self.context.error_files:
            with contextlib.suppress(Exception):
                os.unlink(path)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _exit_detail(exitcode: int | None, error_file: str | None) -> str:
    trace = None
    if error_file and os.path.exists(error_file):
        with contextlib.suppress(Exception), open(error_file, "rb") as fh:
            trace = pickle.load(fh)
    if exitcode is None:
        detail = "it stopped answering"
    elif exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        detail = f"terminated by {name}"
        if -exitcode == signal.SIGKILL:
            detail += " (killed; the out-of-memory killer sends SIGKILL too)"
    else:
        detail = f"exited with code {exitcode}"
    return f"{detail}\n{trace}" if trace else detail


def _worker_error(failures: dict[int, dict[str, Any]], what: str) -> WorkerError:
    """One exception for every rank's failure, naming the rank that failed first (not those that followed it)."""
    first = [r for r, f in failures.items() if not f["secondary"]] or list(failures)
    rank = min(first)
    info = failures[rank]
    lines = [f"xcfg.launch: worker rank {rank} raised {info['type']}: {info['message']} (in the {what})"]
    others = sorted(r for r in failures if r != rank)
    if others:
        lines.append("other ranks: " + "; ".join(f"rank {r} raised {failures[r]['type']}" for r in others))
    lines.append(f"--- rank {rank} traceback ---\n{info['traceback'].rstrip()}")
    error = WorkerError("\n".join(lines), rank=rank, errors={r: f["traceback"] for r, f in failures.items()})
    if info.get("exception") is not None:
        with contextlib.suppress(Exception):
            error.__cause__ = pickle.loads(info["exception"])
    return error


def _pickled_call(payload: tuple[Any, ...]) -> bytes:
    try:
        return pickle.dumps(_outbound(payload), protocol=_PROTOCOL)
    except Exception as err:
        raise TypeError(
            f"xcfg.launch: the call's arguments cannot be sent to the workers ({type(err).__name__}: {err}); "
            "functions (callbacks) must be module-level, tensors, arrays, images and plain values are fine"
        ) from err


class _CallerBar:
    """The calling process's view of rank 0's progress bar."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.bar: Any = None

    def handle(self, event: str, value: Any) -> None:
        if event == "open":
            self.close()
            from tqdm.auto import tqdm

            total, worker_config = value
            self.bar = tqdm(total=total, **{**worker_config, **self.config})
        elif event == "update" and self.bar is not None:
            self.bar.update(value)
        elif event == "close":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- what travels: tensors, generators --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Seed:
    """A ``torch.Generator`` in transit: its initial seed and the type of device it drew on."""

    seed: int
    device_type: str


def _map_tree(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``leaf`` applied to every leaf of nested containers, through the core's one tree walker (a seed is a leaf)."""
    return tree_map(lambda value, _label: leaf(value), obj, stop=lambda value: isinstance(value, _Seed))


def _outbound(obj: Any) -> Any:
    def leaf(value: Any) -> Any:
        if isinstance(value, torch.Generator):
            return _Seed(value.initial_seed(), value.device.type)
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        return value

    return _map_tree(obj, leaf)


def _inbound(obj: Any, device: torch.device) -> Any:
    def leaf(value: Any) -> Any:
        if isinstance(value, _Seed):
            return torch.Generator("cpu" if value.device_type == "cpu" else device).manual_seed(value.seed)
        if isinstance(value, torch.Tensor):
            return value.to(device)
        return value

    return _map_tree(obj, leaf)


def _to_cpu(obj: Any) -> Any:
    return _map_tree(obj, lambda value: value.detach().cpu() if isinstance(value, torch.Tensor) else value)


# -- the worker process -----------------------------------------------------------------------------------


def _worker_main(rank: int, world_size: int, spec: _WorkerSpec, conns: list[Connection]) -> None:
    """A worker's life: join the group, build, parallelize, serve until "close" or the caller is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the caller's to handle
    conn = conns[rank]
    for other, end in enumerate(conns):
        if other != rank:
            end.close()
    _exit_with_parent()
    device = torch.device(spec.devices[rank])
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(device.index if device.index is not None else rank),
    )
    worker = _Worker(rank, device, conn)
    if worker.start(spec, world_size):
        worker.serve()
    else:
        with contextlib.suppress(Exception):
            conn.recv_bytes()  # wait for the caller to stop us (or to go away)
    worker.finish()


def _exit_with_parent() -> None:
    """Leave at once when the calling process is gone, even in the middle of a call."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="xcfg-launch-parent-watch", daemon=True).start()


class _Worker:
    def __init__(self, rank: int, device: torch.device, conn: Connection) -> None:
        self.rank = rank
        self.device = device
        self.conn = conn
        self.pipe: Any = None
        self.call_id = 0

    def send(self, message: tuple[Any, ...]) -> None:
        self.conn.send_bytes(pickle.dumps(message, protocol=_PROTOCOL))

    def start(self, spec: _WorkerSpec, world_size: int) -> bool:
        import torch.distributed as dist

        try:
            if spec.threads:
                torch.set_num_threads(spec.threads)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            kwargs: dict[str, Any] = {}
            if self.device.type == "cuda" and "nccl" in spec.backend:
                kwargs["device_id"] = self.device
            dist.init_process_group(
                spec.backend, init_method=f"file://{spec.store}", rank=self.rank, world_size=world_size,
                timeout=datetime.timedelta(seconds=spec.timeout), **kwargs,
            )
            factory = _load_factory(spec.factory)
            pipe = factory()
            if pipe is None:
                raise TypeError(f"the factory {_factory_name(factory)!r} returned None instead of a pipeline")
            import xcfg

            self.handle = xcfg.parallelize(pipe, **pickle.loads(spec.options))
            self.pipe = pipe
            self._install_progress_bar(pipe)
        except BaseException as err:
            self.send(("failed", self.rank, _error_info(err)))
            return False
        self.send(("ready", self.rank, {"pid": os.getpid(), "device": str(self.device)}))
        return True

    def serve(self) -> None:
        while True:
            try:
                header = self.conn.recv_bytes()
                body = self.conn.recv_bytes()
            except (EOFError, OSError):
                return  # the caller is gone
            call_id, kind = pickle.loads(header)
            if kind == "close":
                return
            self.call_id = call_id
            try:
                target, args, kwargs = _inbound(_unpickle_call(body), self.device)
                if kind == "call":
                    value = self._attribute(target)(*args, **kwargs)
                    value = value if self.rank == 0 else None
                elif isinstance(target, str):
                    found = self._attribute(target)
                    value = found(*args, **kwargs) if callable(found) else found
                else:
                    value = target(self.pipe, *args, **kwargs)
                message = _pickled_answer(call_id, self.rank, _to_cpu(value))
            except BaseException as err:
                message = pickle.dumps(("done", call_id, self.rank, False, _error_info(err)), protocol=_PROTOCOL)
            self.conn.send_bytes(message)

    def finish(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        with contextlib.suppress(Exception):
            self.conn.close()

    def _attribute(self, path: str) -> Any:
        if path == "__call__":
            return self.pipe
        found = self.pipe
        for part in path.split("."):
            found = getattr(found, part)
        return found

    def _install_progress_bar(self, pipe: Any) -> None:
        """Rank 0's bar is forwarded to the caller; the other ranks' bars are off."""
        if not callable(getattr(pipe, "progress_bar", None)) or not hasattr(pipe, "__dict__"):
            return
        if self.rank != 0:
            if callable(getattr(pipe, "set_progress_bar_config", None)):
                pipe.set_progress_bar_config(disable=True)
            return
        worker = self

        def progress_bar(iterable: Any = None, total: int | None = None) -> _ForwardedBar:
            if iterable is None and total is None:
                raise ValueError("Either `total` or `iterable` has to be defined.")
            config = {
                key: value for key, value in (getattr(pipe, "_progress_bar_config", None) or {}).items()
                if value is None or isinstance(value, (str, int, float, bool))
            }
            return _ForwardedBar(worker, iterable, total, config)

        pipe.__dict__["progress_bar"] = progress_bar


class _ForwardedBar:
    """What rank 0's pipeline gets from ``self.progress_bar(...)``: each update goes to the caller's bar."""

    def __init__(self, worker: _Worker, iterable: Any, total: int | None, config: dict[str, Any]) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self._worker = worker
        self._iterable = iterable
        self._closed = False
        self._send("open", (total, config))

    def _send(self, event: str, value: Any) -> None:
        self._worker.send(("bar", self._worker.call_id, event, value))

    def update(self, n: int = 1) -> None:
        self._send("update", n)

    def __iter__(self) -> Any:
        for item in self._iterable:
            yield item
            self.update()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._send("close", None)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Not forwarded."""

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        """Not forwarded."""

    def __enter__(self) -> _ForwardedBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pickled_answer(call_id: int, rank: int, value: Any) -> bytes:
    try:
        return pickle.dumps(("done", call_id, rank, True, value), protocol=_PROTOCOL)
    except Exception as err:
        raise TypeError(
            f"the result ({type(value).__name__}) cannot be sent back to the caller: {type(err).__name__}: {err}"
        ) from err


def _load_factory(data: bytes) -> Callable[[], Any]:
    factory = pickle.loads(data)
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        factory = found
    if not callable(factory):
        raise TypeError(f"the factory {factory!r} is not callable")
    return factory


def _unpickle_call(body: bytes) -> Any:
    try:
        return pickle.loads(body)
    except Exception as err:
        raise TypeError(
            f"the worker could not unpickle the call ({type(err).__name__}: {err}); functions passed to a call "
            "must be importable in the worker: module-level, not defined in a notebook"
        ) from err


def _error_info(err: BaseException) -> dict[str, Any]:
    cls = type(err)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        pickled: bytes | None = pickle.dumps(err, protocol=_PROTOCOL)
    except Exception:
        pickled = None
    return {
        "type": name,
        "message": str(err),
        "traceback": "".join(traceback.format_exception(err)),
        "secondary": isinstance(err, RankFailedError),
        "exception": pickled,
    }
