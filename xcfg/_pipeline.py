"""Pipeline-level integration: every pipeline call starts and ends in step on all ranks.

``parallelize`` gives the pipeline instance a generated subclass of its own class (the technique
``torch.nn.utils.parametrize`` uses) whose ``__call__`` brackets the original one:

- at the start, the ranks agree that a run begins and copy rank 0's random state (torch's global CPU
  and CUDA generators and every ``generator`` passed to the call) to every rank, so all ranks draw the
  same starting noise and the same sampler noise;
- at the end, the ranks agree that every rank finished; an exception on any rank makes every rank raise;
- the call's plain arguments (numbers, strings, booleans, ``None`` and lists of those, such as
  ``guidance_scale`` or ``prompt``) are compared with rank 0's at the start; a difference raises
  :class:`xcfg.DivergenceError` on every rank, naming the argument;
- a pipeline call made from inside another (a step-end callback that calls ``pipe(...)``) gets the same
  start and end as any other, with its own call index; the outer call's place is restored after it;
- an interrupt (``pipe._interrupt``, which pipelines read at the top of every step) must be requested
  on every rank alike, as a step-end callback does; one requested on one rank only makes every rank
  raise :class:`xcfg.RankMismatchError` at the next denoiser call instead of hanging.

The brackets belong to the session of the modules that split, not to one pipeline object: a second
pipeline on the same modules (``Pipeline.from_pipe(pipe)``) gets them from ``xcfg.parallelize(pipe2)``,
which attaches the existing session (see :func:`xcfg.parallelize`).

Removing the handle restores the original class. A bracketed pipeline refuses ``copy.deepcopy`` and
``pickle``: it holds process groups, which cannot be copied.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch

from ._errors import RankError
from ._session import Session, plain_arguments

__all__ = ["install_pipeline_hooks", "is_hooked"]

_SESSION_ATTR = "_xcfg_session"
_END_ATTR = "_xcfg_on_run_end"
_subclasses: dict[type, type] = {}


def _arguments(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        bound = signature.bind_partial(None, *args, **kwargs)
    except TypeError:
        return dict(kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)), None)  # self
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
    return arguments


def _generators(arguments: dict[str, Any]) -> list[torch.Generator]:
    value = arguments.get("generator")
    if isinstance(value, torch.Generator):
        return [value]
    if isinstance(value, (list, tuple)):
        return [g for g in value if isinstance(g, torch.Generator)]
    return []


def _refuse_copy(self: Any, *args: Any) -> Any:
    raise TypeError(
        f"xcfg: this {type(self).__name__} is parallelized: it holds xcfg's process groups and hooks, which cannot "
        "be copied or pickled. Copy or save the original instead: call .remove() on the handle xcfg.parallelize() "
        "returned (or leave its with-block), copy or pickle the pipeline, then parallelize() the one you run. To "
        "share modules with a second pipeline, use Pipeline.from_pipe(pipe) and xcfg.parallelize() on it."
    )


@functools.partial(torch.compiler.disable, recursive=False)
def bracketed(session: Session, call: Callable[[], Any], arguments: dict[str, Any]) -> Any:
    """Run ``call`` as one pipeline call of ``session``: agreed start (random state, plain arguments) and end.

    A call made while another is under way (from a callback) is bracketed too, with its own call index;
    the outer call's place is restored afterwards. Under a whole-pipeline ``torch.compile`` the bracket is
    not traced (its frame runs eagerly) while ``call``, the pipeline's own code, is still compiled.
    """
    saved = session.save() if session.depth else None
    session.depth += 1
    try:
        try:
            session.begin_run(_generators(arguments), plain_arguments(arguments))
            result = call()
        except BaseException as err:
            if not session.aborted and not isinstance(err, RankError):
                session.end_run(err)
            raise
        session.end_run(None)
        return result
    finally:
        session.depth -= 1
        if saved is not None:
            agreed = session.aborted and sys.exc_info()[0] is not None
            session.restore(saved)
            session.aborted = session.aborted or agreed  # an agreed failure goes on up through the outer call


def _subclass(base: type) -> type:
    if base in _subclasses:
        return _subclasses[base]
    original_call = base.__call__
    signature = inspect.signature(original_call)

    @functools.wraps(original_call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        session: Session | None = self.__dict__.get(_SESSION_ATTR)
        if session is None or session.closed:
            return original_call(self, *args, **kwargs)
        result = bracketed(session, lambda: original_call(self, *args, **kwargs), _arguments(signature, args, kwargs))
        on_end = self.__dict__.get(_END_ATTR)
        if on_end is not None and not session.depth:
            on_end()
        return result

    namespace: dict[str, Any] = {
        "__call__": __call__,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_xcfg_base": base,
        "__reduce_ex__": _refuse_copy,
        "__deepcopy__": _refuse_copy,
    }
    sub = type(base.__name__, (base,), namespace)
    _subclasses[base] = sub
    return sub


def is_hooked(pipe: Any) -> bool:
    """Whether ``pipe`` already carries xcfg's pipeline hooks."""
    return _SESSION_ATTR in getattr(pipe, "__dict__", {})


def install_pipeline_hooks(pipe: Any, session: Session, on_run_end: Callable[[], None] | None = None) -> Callable[[], None]:
    """Give ``pipe`` the run-level hooks; returns a function that removes them.

    ``on_run_end`` is called on every rank after each pipeline call that succeeded everywhere.
    """
    base = type(pipe)
    object.__setattr__(pipe, "__class__", _subclass(base))
    pipe.__dict__[_SESSION_ATTR] = session
    session.pipelines += 1
    if on_run_end is not None:
        pipe.__dict__[_END_ATTR] = on_run_end

    def remove() -> None:
        pipe.__dict__.pop(_END_ATTR, None)
        if pipe.__dict__.pop(_SESSION_ATTR, None) is not None:
            object.__setattr__(pipe, "__class__", base)
            session.pipelines -= 1

    return remove
