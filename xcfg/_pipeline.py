"""Pipeline-level integration: every pipeline call starts and ends in step on all ranks.

``parallelize`` gives the pipeline instance a generated subclass of its own class (the technique
``torch.nn.utils.parametrize`` uses) whose ``__call__`` brackets the original one:

- at the start, the ranks agree that a run begins and copy rank 0's random state (torch's global CPU
  and CUDA generators and every ``generator`` passed to the call) to every rank, so all ranks draw the
  same starting noise and the same sampler noise;
- at the end, the ranks agree that every rank finished; an exception on any rank makes every rank raise;
- an interrupt (``pipe._interrupt``, which pipelines read at the top of every step) must be requested
  on every rank alike, as a step-end callback does; one requested on one rank only makes every rank
  raise :class:`xcfg.RankMismatchError` at the next denoiser call instead of hanging.

Removing the handle restores the original class.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from ._session import Session

__all__ = ["install_pipeline_hooks", "is_hooked"]

_SESSION_ATTR = "_xcfg_session"
_END_ATTR = "_xcfg_on_run_end"
_subclasses: dict[type, type] = {}


def _generators(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Generator]:
    try:
        bound = signature.bind_partial(None, *args, **kwargs)
    except TypeError:
        return []
    value = bound.arguments.get("generator")
    if isinstance(value, torch.Generator):
        return [value]
    if isinstance(value, (list, tuple)):
        return [g for g in value if isinstance(g, torch.Generator)]
    return []


def _subclass(base: type) -> type:
    if base in _subclasses:
        return _subclasses[base]
    original_call = base.__call__
    signature = inspect.signature(original_call)

    @functools.wraps(original_call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        session: Session | None = self.__dict__.get(_SESSION_ATTR)
        if session is None or session.depth:
            return original_call(self, *args, **kwargs)
        session.depth += 1
        try:
            try:
                session.begin_run(_generators(signature, args, kwargs))
                result = original_call(self, *args, **kwargs)
            except BaseException as err:
                if not session.aborted:
                    session.end_run(err)
                raise
            session.end_run(None)
            on_end = self.__dict__.get(_END_ATTR)
            if on_end is not None:
                on_end()
            return result
        finally:
            session.depth -= 1

    namespace: dict[str, Any] = {
        "__call__": __call__,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "_xcfg_base": base,
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
    if on_run_end is not None:
        pipe.__dict__[_END_ATTR] = on_run_end

    def remove() -> None:
        pipe.__dict__.pop(_END_ATTR, None)
        if pipe.__dict__.pop(_SESSION_ATTR, None) is not None:
            object.__setattr__(pipe, "__class__", base)

    return remove
