"""``xcfg.launch``: one process drives 2 gloo CPU workers; no torchrun, no mocks of ``torch.distributed``.

The workers are real processes started by ``torch.multiprocessing``; the pipeline is the tiny CogVideoX
example (random weights, no download). What is checked: a proxy call equals a one-process run and each
worker computed only its half of every CFG batch; images, tensors and generators arrive alike on every
worker; ``parallelize`` options reach the workers; an error on one worker comes back naming it and the pool
stays usable, as it does after a Ctrl-C; bad input is refused before any process starts; a worker killed in
the middle of a call is reported and the pool closes itself; a silence longer than the timeout, and close()
from another thread, end a waiting call; close, restart, the ``with`` form, garbage collection and the exit
(or death) of the calling process leave no process behind (checked by PID). The progress bar shows once.

The pools start from a fork server (``start_method="forkserver"``) so that only the first one pays for
importing torch and diffusers; ``spawn``, the default, is what the HTTP example's test runs.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import xcfg
from xcfg.testing import BatchCounter, relative_error

START = "forkserver"
STEPS = 2


# -- run in the workers (module-level, so the workers can import them) --------------------------------------


def make_pipe():
    """The factory: each worker builds the same tiny CogVideoX (seeded random weights)."""
    return xcfg.build_example("cogvideox", size="tiny").pipe


def make_nothing():
    raise RuntimeError("the factory could not find its weights")


def count_batches(pipe):
    pipe.__dict__["_test_counter"] = BatchCounter(pipe.transformer).__enter__()


def counted_batches(pipe):
    counter = pipe.__dict__.pop("_test_counter")
    counter.__exit__(None, None, None)
    return counter.batches


def fail_on_rank_1(pipe, message):
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError(message)
    return dist.get_rank()


def fail_in_callback_on_rank_1(pipe, step, timestep, callback_kwargs):
    import torch.distributed as dist

    if dist.get_rank() == 1 and step == 0:
        raise ValueError("boom in rank 1's step-end callback")
    return callback_kwargs


def stall_on_rank_1(marker, pipe, step, timestep, callback_kwargs):
    """Rank 1 says it is inside the call, then takes its time, so that the test can kill it mid-call."""
    import torch.distributed as dist

    if dist.get_rank() == 1:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(60)
    return callback_kwargs


def describe(pipe, values):
    """What arrived in a worker: types, devices, and the first number each generator draws."""
    image, tensor, generators = values["image"], values["nested"][0]["tensor"], values["generators"]
    return {
        "image": (type(image).__name__, image.size, image.getpixel((0, 0))),
        "tensor": (tensor.device.type, tensor.tolist()),
        "draws": [torch.rand(1, generator=g).item() for g in generators],
    }


def sleep(pipe, seconds):
    time.sleep(seconds)


# -- helpers in the test process ------------------------------------------------------------------------------


def call_kwargs():
    kwargs = dict(xcfg.build_example("cogvideox", size="tiny").kwargs)
    kwargs.update(num_inference_steps=STEPS, output_type="pt")
    return kwargs


def alive(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def assert_gone(pids, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], f"processes left behind: {[p for p in pids if alive(p)]}"


def children() -> set[int]:
    """This process's live child processes."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with open(task / "children") as fh:
            found.update(int(p) for p in fh.read().split())
    return {p for p in found if alive(p)}


@pytest.fixture(scope="module")
def reference():
    """The one-process run: the plain pipeline, its output and the batch its transformer computed per call."""
    pipe = make_pipe()
    with BatchCounter(pipe.transformer) as counter:
        out = pipe(**call_kwargs(), generator=torch.Generator().manual_seed(7)).frames
    return out, counter.batches


@pytest.fixture(scope="module")
def pool():
    proxy = xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120)
    yield proxy
    pids = proxy.pids
    proxy.close()
    assert_gone(pids)


# -- equality and the share each worker computes ----------------------------------------------------------------


@pytest.mark.ranks
@pytest.mark.timeout(180)
def test_a_call_equals_one_process_and_each_worker_computes_half(pool, reference):
    expected, single_batches = reference
    pool.run_on_workers(count_batches)
    out = pool(**call_kwargs(), generator=torch.Generator().manual_seed(7))
    batches = pool.run_on_workers(counted_batches)

    assert type(out).__name__ == "CogVideoXPipelineOutput" and out.frames.device.type == "cpu"
    assert relative_error(out.frames, expected) < 1e-4
    assert single_batches == [2] * STEPS
    assert batches == [[1] * STEPS, [1] * STEPS], batches
    # the generator travels as its seed: the same seed gives the same video, another seed another one
    again = pool(**call_kwargs(), generator=torch.Generator().manual_seed(7)).frames
    other = pool(**call_kwargs(), generator=torch.Generator().manual_seed(8)).frames
    assert torch.equal(again, out.frames) and not torch.equal(other, out.frames)
    assert pool.run_on_workers("transformer.config.num_layers") == [make_pipe().transformer.config.num_layers] * 2


@pytest.mark.ranks
@pytest.mark.timeout(120)
def test_images_tensors_and_generators_arrive_alike_on_every_worker(pool):
    from PIL import Image

    generator = torch.Generator().manual_seed(11)
    torch.rand(5, generator=generator)  # used: it still travels as its initial seed
    values = {
        "image": Image.new("RGB", (7, 5), (10, 20, 30)),
        "nested": ({"tensor": torch.arange(3.0).requires_grad_()},),
        "generators": [generator, torch.Generator().manual_seed(12)],
    }
    arrived = pool.run_on_workers(describe, values)
    expected_draws = [torch.rand(1, generator=torch.Generator().manual_seed(s)).item() for s in (11, 12)]
    assert arrived == [{
        "image": ("Image", (7, 5), (10, 20, 30)),
        "tensor": ("cpu", [0.0, 1.0, 2.0]),
        "draws": expected_draws,
    }] * 2


@pytest.mark.ranks
@pytest.mark.timeout(180)
def test_an_error_on_one_worker_names_the_rank_and_the_pool_stays_usable(pool, reference):
    with pytest.raises(xcfg.WorkerError) as caught:
        pool.run_on_workers(fail_on_rank_1, "boom on rank 1")
    assert caught.value.rank == 1 and sorted(caught.value.errors) == [1]
    assert "worker rank 1 raised ValueError: boom on rank 1" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)

    # inside a pipeline call: rank 1 raises, rank 0 follows with RankFailedError; rank 1 is the one named
    with pytest.raises(xcfg.WorkerError) as caught:
        pool(**call_kwargs(), callback_on_step_end=fail_in_callback_on_rank_1)
    assert caught.value.rank == 1, caught.value
    assert "boom in rank 1's step-end callback" in str(caught.value)

    out = pool(**call_kwargs(), generator=torch.Generator().manual_seed(7)).frames
    assert relative_error(out, reference[0]) < 1e-4
    assert not pool.closed


@pytest.mark.ranks
@pytest.mark.timeout(120)
def test_ctrl_c_while_waiting_leaves_the_pool_usable(pool, reference):
    """The interrupted call runs on in the workers; the next call waits for it and gets its own answer."""
    interrupt = threading.Timer(0.5, signal.pthread_kill, args=(threading.main_thread().ident, signal.SIGINT))
    interrupt.start()
    with pytest.raises(KeyboardInterrupt):
        pool.run_on_workers(sleep, 2)
    interrupt.join()
    assert not pool.closed
    out = pool(**call_kwargs(), generator=torch.Generator().manual_seed(7)).frames
    assert relative_error(out, reference[0]) < 1e-4
    assert pool.run_on_workers(_pid) == pool.pids


# -- refusals before any worker starts ---------------------------------------------------------------------------


@pytest.mark.ranks
@pytest.mark.timeout(60)
def test_bad_input_is_refused_before_any_worker_starts():
    before = children()
    refusals = {
        "lambda": lambda: xcfg.launch(lambda: None, device="cpu"),
        "local function": lambda: xcfg.launch(_local_factory(), device="cpu"),
        "not callable": lambda: xcfg.launch(42, device="cpu"),
        "bad path": lambda: xcfg.launch("no_such_module_xcfg:make_pipe", device="cpu"),
        "path without function": lambda: xcfg.launch("test_launch", device="cpu"),
        "nproc 0": lambda: xcfg.launch(make_pipe, nproc=0, device="cpu"),
        "more GPUs than there are": lambda: xcfg.launch(make_pipe, nproc=torch.cuda.device_count() + 1, device="cuda"),
        "one device for two": lambda: xcfg.launch(make_pipe, nproc=2, device=["cpu"]),
        "unknown option": lambda: xcfg.launch(make_pipe, device="cpu", no_such_option=1),
        "unpicklable option": lambda: xcfg.launch(make_pipe, device="cpu", registry=threading.Lock()),
        "bad timeout": lambda: xcfg.launch(make_pipe, device="cpu", timeout=0),
    }
    for label, attempt in refusals.items():
        with pytest.raises(xcfg.SetupError) as caught:
            attempt()
        assert "xcfg.launch" in str(caught.value), label
    with pytest.raises(xcfg.SetupError, match="GPU"):
        refusals["more GPUs than there are"]()
    assert children() == before


def _local_factory():
    def factory():
        return None

    return factory


@pytest.mark.ranks
@pytest.mark.timeout(120)
def test_a_factory_that_raises_is_reported_and_no_worker_is_left():
    before = children()
    with pytest.raises(xcfg.WorkerError) as caught:
        xcfg.launch(make_nothing, nproc=2, device="cpu", start_method=START, timeout=60)
    assert "RuntimeError: the factory could not find its weights" in str(caught.value)
    assert caught.value.rank in (0, 1)
    assert children() <= before


# -- deaths, timeouts, close and restart --------------------------------------------------------------------------


@pytest.mark.ranks
@pytest.mark.timeout(180)
def test_a_worker_killed_mid_call_is_reported_and_the_pool_closes_itself(tmp_path, reference):
    proxy = xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120)
    pids = proxy.pids
    marker = tmp_path / "rank1-inside-the-call"
    outcome = {}

    def call():
        try:
            proxy(**call_kwargs(), callback_on_step_end=functools.partial(stall_on_rank_1, str(marker)))
        except BaseException as err:  # noqa: BLE001 - the test looks at it
            outcome["error"] = err

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "rank 1 never reached its callback"
    os.kill(pids[1], signal.SIGKILL)
    caller.join(60)
    assert not caller.is_alive()

    error = outcome.get("error")
    assert isinstance(error, xcfg.WorkerDiedError), error
    assert error.rank == 1 and error.exitcode == -signal.SIGKILL
    assert "worker rank 1" in str(error) and "SIGKILL" in str(error)
    assert proxy.closed
    assert_gone(pids)
    with pytest.raises(xcfg.LaunchError, match="closed"):
        proxy(**call_kwargs())

    # a new pool starts and works; dropping the proxy stops its workers
    fresh = xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120)
    out = fresh(**call_kwargs(), generator=torch.Generator().manual_seed(7)).frames
    assert relative_error(out, reference[0]) < 1e-4
    pids = fresh.pids
    del fresh
    gc.collect()
    assert_gone(pids)


@pytest.mark.ranks
@pytest.mark.timeout(120)
def test_a_silence_longer_than_the_timeout_closes_the_pool():
    proxy = xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120)
    pids = proxy.pids
    proxy.timeout = 1.0
    with pytest.raises(xcfg.WorkerTimeoutError, match="within 1 s"):
        proxy.run_on_workers(sleep, 30)
    assert proxy.closed
    assert_gone(pids)


@pytest.mark.ranks
@pytest.mark.timeout(120)
def test_close_from_another_thread_ends_a_waiting_call():
    proxy = xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120)
    pids = proxy.pids
    closer = threading.Timer(1.0, proxy.close)
    closer.start()
    with pytest.raises(xcfg.LaunchError, match="closed"):
        proxy.run_on_workers(sleep, 30)
    closer.join()
    assert_gone(pids)


@pytest.mark.ranks
@pytest.mark.timeout(180)
def test_options_reach_parallelize_the_with_form_leaves_no_process_and_the_bar_shows_once(capfd):
    # degree=1: CFG groups of one rank, so parallelize installs nothing and each worker computes whole batches
    with xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120, degree=1) as proxy:
        proxy.run_on_workers(count_batches)
        capfd.readouterr()
        proxy(**call_kwargs())
        err = capfd.readouterr().err
        assert err.count(f" 0/{STEPS} [") == 1, err  # rank 0's bar, shown once, by this process
        assert proxy.run_on_workers(counted_batches) == [[2] * STEPS, [2] * STEPS]
        pids = proxy.pids
    assert proxy.closed
    assert_gone(pids)
    proxy.close()  # idempotent


def _pid(pipe):
    return os.getpid()


def _caller(how, conn):
    """A calling process: start a pool, report its workers, then exit with the pool open, or be killed."""
    proxy = xcfg.launch(make_pipe, nproc=2, device="cpu", start_method=START, timeout=120)
    conn.send(proxy.pids)
    conn.close()
    if how == "killed":
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.ranks
@pytest.mark.timeout(120)
def test_the_exit_of_the_calling_process_stops_its_workers():
    """A caller that exits with its pool open (the exit hook closes it), and one that is killed (the workers
    notice their parent is gone). The callers are forked from a fork server that has imported xcfg."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "diffusers", "xcfg"])
    callers = {}
    for how in ("exits", "killed"):
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_caller, args=(how, send))
        process.start()
        send.close()
        callers[how] = (process, receive)
    for how, (process, receive) in callers.items():
        assert receive.poll(90), f"the caller that {how} did not start its pool"
        pids = receive.recv()
        process.join(30)
        assert process.exitcode == (0 if how == "exits" else -signal.SIGKILL), (how, process.exitcode)
        assert_gone(pids, within=15)
