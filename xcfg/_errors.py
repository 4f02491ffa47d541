"""Every error xcfg raises, in one place.

The hierarchy::

    XcfgError                      base of everything below
    ├── SpecError (ValueError)     a malformed model spec, caught when it is registered or installed
    ├── RefusedError               xcfg will not parallelize this pipeline; nothing was changed
    │   ├── UnsupportedModelError  no plugin knows the denoiser's class (inference off)
    │   ├── NoCFGError             the model has no uncond/cond pair to split (guidance-distilled)
    │   ├── UnsupportedPipelineError  the model is known, but this pipeline's calls cannot be split correctly
    │   └── SetupError             the set-up cannot work: world size, device, backend, applied twice
    ├── ShapeError (ValueError)    a batch argument's shape does not match the batch of the call
    ├── LaunchError                a worker pool started by xcfg.launch failed; raised in the calling process
    │   ├── WorkerError            a worker raised; names the rank and its error; the pool stays usable
    │   ├── WorkerDiedError        a worker process exited (killed, out of memory); the pool is closed
    │   └── WorkerTimeoutError     no answer from the workers within the timeout; the pool is closed
    └── RankError                  the ranks of a CFG group stopped agreeing; raised on every rank
        ├── RankFailedError        a rank raised; the others raise this, naming it and its error
        ├── RankMismatchError      the ranks reached different points (a different call, batch or end)
        ├── DivergenceError        the ranks fed the denoiser different inputs
        └── RankTimeoutError       a peer did not answer within the CFG group's timeout

Refusals are raised by :func:`xcfg.parallelize` on every rank before any collective starts. A
:class:`RankError` is raised on every rank of the group at the same point, so no rank is left waiting.
"""

from __future__ import annotations

__all__ = [
    "DivergenceError",
    "LaunchError",
    "NoCFGError",
    "RankError",
    "RankFailedError",
    "RankMismatchError",
    "RankTimeoutError",
    "RefusedError",
    "SetupError",
    "ShapeError",
    "SpecError",
    "UnsupportedModelError",
    "UnsupportedPipelineError",
    "WorkerDiedError",
    "WorkerError",
    "WorkerTimeoutError",
    "XcfgError",
]


class XcfgError(Exception):
    """Base class of every error raised by xcfg.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.NoCFGError, xcfg.XcfgError)
        True
    """


class SpecError(XcfgError, ValueError):
    """A model spec is malformed; the message names the plugin and the field.

    Example:
        >>> import xcfg
        >>> try:
        ...     xcfg.ModelSpec(model="diffusers:SD3Transformer2DModel", batch_inputs=[{"dim": 0}])
        ... except xcfg.SpecError as err:
        ...     print("batch_inputs.0.name" in str(err))
        True
    """


class RefusedError(XcfgError):
    """:func:`xcfg.parallelize` refused the pipeline and left it unchanged.

    Example:
        >>> import torch, xcfg
        >>> class Pipe:
        ...     transformer = torch.nn.Linear(2, 2)
        >>> try:
        ...     xcfg.parallelize(Pipe(), infer=False)   # no plugin names Linear, and inference is off
        ... except xcfg.RefusedError as err:
        ...     print(type(err).__name__)
        UnsupportedModelError
    """


class UnsupportedModelError(RefusedError):
    """No registered plugin knows the denoiser's class (or any of its base classes).

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.UnsupportedModelError, xcfg.RefusedError)
        True
    """


class UnsupportedPipelineError(RefusedError):
    """The plugin knows the denoiser, but this pipeline uses it in a way xcfg cannot split correctly.

    The message carries the plugin's reason (its spec's ``refuse``), for example a pipeline whose uncond
    call gets other latents than its cond call.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.UnsupportedPipelineError, xcfg.RefusedError)
        True
    """


class NoCFGError(RefusedError):
    """The model runs without an uncond/cond pair, so there is nothing to split across ranks.

    Guidance-distilled models such as Flux-dev embed the guidance scale as an input and evaluate one
    branch per step.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.NoCFGError, xcfg.RefusedError)
        True
    """


class SetupError(RefusedError):
    """The distributed set-up cannot work: the message says what to change.

    Raised for a world size the CFG degree does not divide, ``parallelize`` applied twice, a model on a
    device that is not its rank's, and a backend that cannot move the model's tensors.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.SetupError, xcfg.RefusedError)
        True
    """


class ShapeError(XcfgError, ValueError):
    """A declared batch argument does not carry the batch of the call.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.ShapeError, ValueError)
        True
    """


class RankError(XcfgError):
    """The ranks of a CFG group stopped agreeing. Raised on every rank of the group, at the same point.

    Attributes:
        rank: the group rank the error is about (the failing or first disagreeing rank), or ``None``.

    Example:
        >>> import xcfg
        >>> xcfg.RankError("ranks disagree", rank=1).rank
        1
    """

    def __init__(self, message: str, *, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


class RankFailedError(RankError):
    """Another rank raised; this rank raises this error, naming that rank and its error.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.RankFailedError, xcfg.RankError)
        True
    """


class RankMismatchError(RankError):
    """The ranks reached different points: a different call, a different batch, or the end of the run.

    Typical causes: a callback or an ``interrupt`` that acts on one rank only, or different pipeline
    arguments per rank.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.RankMismatchError, xcfg.RankError)
        True
    """


class DivergenceError(RankError):
    """The ranks fed the denoiser different inputs, so their results would silently differ.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.DivergenceError, xcfg.RankError)
        True
    """


class RankTimeoutError(RankError):
    """A peer did not reach the same point within the CFG group's timeout.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.RankTimeoutError, xcfg.RankError)
        True
    """


class LaunchError(XcfgError):
    """A worker pool started by :func:`xcfg.launch` failed, or was used after it closed.

    Raised in the calling process, never in a worker.

    Attributes:
        rank: the worker the error is about, or ``None`` when it is about the pool as a whole.

    Example:
        >>> import xcfg
        >>> xcfg.LaunchError("the pool is closed", rank=None).rank is None
        True
    """

    def __init__(self, message: str, *, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


class WorkerError(LaunchError):
    """A worker raised while building the pipeline or running a call; the message names the rank and its error.

    When the other ranks raised only because that rank failed (:class:`RankFailedError`), the error
    names the rank that failed first. A call that failed this way leaves the pool usable: the next
    call runs normally.

    Attributes:
        rank: the rank whose error is reported.
        errors: each failing rank's traceback, as text, keyed by rank.

    Example:
        >>> import xcfg
        >>> err = xcfg.WorkerError("worker rank 1 raised ValueError: boom", rank=1, errors={1: "..."})
        >>> err.rank, sorted(err.errors)
        (1, [1])
    """

    def __init__(self, message: str, *, rank: int | None = None, errors: dict[int, str] | None = None) -> None:
        super().__init__(message, rank=rank)
        self.errors = dict(errors or {})


class WorkerDiedError(LaunchError):
    """A worker process exited while the pool was in use (killed, out of memory, a crash); the pool is closed.

    Start a new pool with :func:`xcfg.launch`.

    Attributes:
        rank: the worker that died.
        exitcode: its exit code; negative for the signal that ended it (``-9``: SIGKILL, which is also
            what the out-of-memory killer sends).

    Example:
        >>> import xcfg
        >>> xcfg.WorkerDiedError("worker rank 1 died", rank=1, exitcode=-9).exitcode
        -9
    """

    def __init__(self, message: str, *, rank: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(message, rank=rank)
        self.exitcode = exitcode


class WorkerTimeoutError(LaunchError, TimeoutError):
    """The workers did not answer within the pool's timeout; the pool is closed (its workers are stopped).

    During a call, every message from the workers (a progress-bar update too) restarts the wait, so
    the timeout bounds a silence, not the length of a call.

    Example:
        >>> import xcfg
        >>> issubclass(xcfg.WorkerTimeoutError, TimeoutError)
        True
    """
