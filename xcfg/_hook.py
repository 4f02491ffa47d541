"""The hook xcfg installs on a denoiser: a named, removable diffusers ``ModelHook`` that runs each call
through a CFG style under the control protocol, and the public :func:`wrap_denoiser` that installs it.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from ._errors import SetupError
from ._group import CFGGroup
from ._notices import warn_once
from ._protocol import CallPlan, run_call
from ._session import Session
from ._spec import ModelSpec
from ._styles import STYLES, Batched, Call, Style

__all__ = ["HOOK_NAME", "Wrapped", "is_wrapped", "runs_whole", "wrap_denoiser"]

HOOK_NAME = "xcfg"


class _NoState:
    """xcfg keeps no state per cache context; it only reads the context's name."""

    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


def runs_whole(module: torch.nn.Module) -> str | None:
    """Why the calls of this pipeline call must reach ``module`` whole on every rank, or ``None``.

    - Perturbed-attention guidance (diffusers' ``PAG*`` processors, set by the PAG pipelines for the
      length of a call) batches ``[uncond, cond, perturbed]`` and mixes that batch inside the model.
    - diffusers' caches (``enable_cache``: first-block cache, FasterCache, ...) keep state per
      ``cache_context`` and decide from statistics of the whole batch; a rank that sees half of it, or
      one of two calls, would decide differently from one process.
    """
    for m in module.modules():
        if "PAG" in type(getattr(m, "processor", None)).__name__:
            return "perturbed-attention guidance mixes the samples of the batch inside the model"
    for m in module.modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is None:
            continue
        if any(getattr(h, "_is_stateful", False) for n, h in registry.hooks.items() if n != HOOK_NAME):
            return "a diffusers cache (enable_cache) decides from the whole batch and keeps state per branch"
    return None


class XcfgHook(ModelHook):
    """Runs every call of one denoiser through its CFG style.

    It is a stateful hook only so that diffusers hands it the name of each ``cache_context`` the pipeline
    opens (``"cond"``, ``"uncond"``, a guider's identifier); it keeps no state per context.
    """

    _is_stateful = True

    def __init__(self, style: Style, group: CFGGroup, session: Session | None) -> None:
        super().__init__()
        self.style = style
        self.group = group
        self.session = session
        self.contexts = StateManager(_NoState)
        self.whole = False  # this pipeline call runs whole on every rank: see runs_whole
        self.checked_run: int | None = None
        self.seen_contexts: set[tuple[str | None, str]] = set()  # (cache context, role) pairs seen this pipeline call
        self.predicted_run: int | None = None  # the pipeline call whose first computed-ahead call was checked
        if session is not None:
            style.agree = session.agree

    @property
    def predictions(self) -> int:
        """How many uncond calls were computed ahead on the other rank so far (two-call style)."""
        return self.style.stats.predictions

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "xcfg: this module is parallelized: its xcfg hook holds process groups, which cannot be copied or "
            "pickled. Call .remove() on the handle xcfg.parallelize() returned, copy or save the module, then "
            "parallelize the one you run."
        )

    __deepcopy__ = __reduce_ex__

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def _context(self) -> str | None:
        context = self.contexts._context
        return None if context is None else context.name

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling() and not isinstance(self.style, Batched):
            # a two-call (or inferred) style decides in Python from the values of past calls: traced, every
            # decision would be a guard and a recompile. Its calls leave the graph (one graph break) and run
            # eagerly with the control plane; blocks compiled on their own (compile_repeated_blocks) stay compiled.
            return _eager(self, module, *args, **kwargs)
        return self._forward(module, *args, **kwargs)

    def _forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        style = self.style
        session = None if torch.compiler.is_compiling() else self.session
        call = Call(
            module=module,
            forward=self.fn_ref.original_forward,
            args=args,
            kwargs=kwargs,
            named=style.binding.bound(args, kwargs),
            context=self._context(),
        )
        if session is None:  # torch.compile traces this path: no control plane, functional collectives
            plan = style.plan(call)
            return style.finish(call, plan, plan.run_local())
        if not session.in_pipeline_call:
            session.aborted = False  # outside a pipeline call the abort state is per denoiser call
            if session.pipelines:
                warn_once(
                    f"xcfg: {type(module).__name__} was called outside a call of the pipeline it was parallelized "
                    "with (a second pipeline made with from_pipe, or a hand-written loop): its calls split, but the "
                    "ranks' random state is not synchronized and no call start or end is agreed. For a second "
                    "pipeline on the same modules, call xcfg.parallelize(pipe2) on every rank."
                )
        run = session.run_index
        if style.run != run:
            style.start_run(run)
        try:
            if self.checked_run != run:
                self.seen_contexts = set()
            if self.checked_run != run or not session.in_pipeline_call:
                self.checked_run = run
                self.whole = _warn_whole(module)
            call.whole = self.whole
            # every call a rank computes for another is covered: the first call of this denoiser in each cache
            # context ("cond", "uncond", ...) and role (a two-call step's first and second call), and the first
            # uncond call computed ahead, besides call 0 and every check_every-th call
            plan: CallPlan = style.plan(call)
            kind = (call.context, call.role)  # the role is known once the style planned the call
            first_here = kind not in self.seen_contexts
            self.seen_contexts.add(kind)
            name = type(module).__name__
            session.compare_inputs(call.named, force=first_here and session.in_pipeline_call, what=name)
            if call.predicted is not None and self.predicted_run != run:
                self.predicted_run = run
                session.compare_inputs(call.predicted, force=True, what=f"the uncond call of {name} computed ahead")
        except BaseException as err:
            session.fail_call(None, err)
            raise
        result = run_call(session, self.group, plan)
        return style.finish(call, plan, result)


@torch.compiler.disable
def _eager(hook: XcfgHook, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    return hook._forward(module, *args, **kwargs)


def _warn_whole(module: torch.nn.Module) -> bool:
    reason = runs_whole(module)
    if reason:
        warn_once(f"xcfg: {reason}, so xcfg runs every call of {type(module).__name__} whole on every rank "
                  "(same result, no speedup)")
    return reason is not None


class Wrapped:
    """A denoiser with the xcfg wrapper installed; :meth:`remove` restores it.

    Attributes:
        module: the wrapped model.
        spec: the spec it was wrapped with (for an inferred model, what was inferred so far).
        group: the CFG group it splits across.

    Example:
        >>> import torch, xcfg
        >>> spec = xcfg.ModelSpec(model=torch.nn.Linear, batch_inputs=["input"])
        >>> wrapped = xcfg.wrap_denoiser(torch.nn.Linear(3, 3), spec, xcfg.CFGGroup.single())
        >>> wrapped.installed
        True
        >>> wrapped.remove()
        >>> wrapped.installed
        False
    """

    def __init__(self, module: torch.nn.Module, spec: ModelSpec, group: CFGGroup, hook: XcfgHook) -> None:
        self.module = module
        self.spec = spec
        self.group = group
        self._hook = hook

    @property
    def style(self) -> Style:
        """The CFG style object that handles this denoiser's calls."""
        return self._hook.style

    @property
    def predictions(self) -> int:
        """How many uncond calls were computed ahead on the other rank (two-call style)."""
        return self._hook.style.stats.predictions

    @property
    def installed(self) -> bool:
        """Whether the wrapper is still on the module."""
        registry = getattr(self.module, "_diffusers_hook", None)
        return registry is not None and registry.get_hook(HOOK_NAME) is self._hook

    def remove(self) -> None:
        """Take the wrapper off; the module's ``forward`` is the original again. Idempotent."""
        if self.installed:
            self.module._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)


def is_wrapped(module: torch.nn.Module) -> bool:
    """Whether ``module`` carries an xcfg wrapper."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(HOOK_NAME) is not None


def install(module: torch.nn.Module, style: Style, spec: ModelSpec, group: CFGGroup, session: Session | None) -> Wrapped:
    """Put ``style`` on ``module`` as the hook named ``"xcfg"``."""
    if is_wrapped(module):
        raise SetupError(
            f"xcfg: {type(module).__name__} is already parallelized; call .remove() on the handle parallelize "
            "returned before applying it again"
        )
    hook = XcfgHook(style, group, session)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
    return Wrapped(module, spec, group, hook)


def wrap_denoiser(
    module: torch.nn.Module, spec: ModelSpec, group: CFGGroup, *, session: Session | None = None
) -> Wrapped:
    """Install the split/gather wrapper described by ``spec`` on ``module``.

    This is the factory :func:`xcfg.parallelize` uses for every denoiser it finds; call it directly
    for a model outside a pipeline. The wrapper is a diffusers ``ModelHook`` named ``"xcfg"``, so it
    composes with diffusers' own hooks, and ``inspect.signature(module.forward)`` is unchanged.

    For a :attr:`CFGStyle.BATCHED` spec, per call it binds the arguments to the forward signature
    (positional or keyword), splits every declared batch input when the batch divides by
    ``group.size`` (a batch that does not divide runs whole on every rank), runs the original forward
    on this rank's share, and all-gathers the output along dim 0, returning the type the caller asked
    for. For a :attr:`CFGStyle.TWO_CALL` spec (a group of 2), the two calls of a step run on the two
    ranks at once from the second step on; see the two-call section of the docs.

    Args:
        module: the denoiser.
        spec: its spec.
        group: the CFG group; with ``group.size == 1`` the wrapper runs everything locally.
        session: the control protocol shared with the pipeline hooks; ``None`` turns off the cross-rank
            checks (failure propagation, input comparison).

    Returns:
        A :class:`Wrapped` handle.

    Raises:
        SetupError: the module is already wrapped, the spec's style is ``none``, or a two-call spec on a
            group that is not 2 ranks.
        SpecError: the spec does not fit the module's forward signature.

    Example:
        >>> import torch, xcfg
        >>> class Denoiser(torch.nn.Module):
        ...     def forward(self, hidden_states, timestep):
        ...         return hidden_states * timestep[:, None]
        >>> spec = xcfg.ModelSpec(model=Denoiser, batch_inputs=["hidden_states", "timestep"])
        >>> wrapped = xcfg.wrap_denoiser(Denoiser(), spec, xcfg.CFGGroup.single())
        >>> wrapped.module(torch.ones(2, 3), torch.tensor([1.0, 2.0])).tolist()
        [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
        >>> wrapped.remove()
    """
    from ._refusals import check_style

    check_style(spec, group.size, type(module).__name__)
    style = STYLES[spec.style](spec, type(module), group, {})
    return install(module, style, spec, group, session)

