"""``xcfg.parallelize(pipe)``: find the denoisers, refuse what cannot work, install the wrappers.

The path of one ``parallelize`` call: find the denoisers (:func:`_denoisers`); look each class up in the
registry, or leave it to inference (:func:`xcfg._refusals.spec_for`); run every refusal
(:mod:`xcfg._refusals`), all before any collective; make the CFG group (:mod:`xcfg._group`), with a layout
the mesh first (:mod:`xcfg._layout`), and agree on the set-up (:class:`xcfg._session.Session`); then install,
each with its undo on the handle: the VAE split (:mod:`xcfg._vae`, over the CFG group, or over a mesh group
of every rank of the layout), a style (:mod:`xcfg._styles`, :mod:`xcfg._infer`) in a hook on every denoiser
(:mod:`xcfg._hook`), and the pipeline-call brackets (:mod:`xcfg._pipeline`).
"""

from __future__ import annotations

import datetime
import zlib
from collections.abc import Callable
from typing import Any

import torch

from ._errors import UnsupportedModelError
from ._group import DEFAULT_TIMEOUT, CFGGroup, is_initialized, mesh_group, world_size
from ._hook import Wrapped, install
from ._infer import Inferred, spec_source
from ._layout import Layout, build_mesh, check_context_parallel, destroy_groups, enable_context_parallel, layout_ranks
from ._notices import warn_once
from ._pipeline import install_pipeline_hooks
from ._refusals import (
    check_devices,
    check_distinct_gpus,
    check_not_parallelized,
    check_pipeline,
    check_style,
    device_key,
    module_device,
    planned_size,
    spec_for,
)
from ._registry import Registry, default_registry
from ._session import Session
from ._spec import ModelSpec
from ._styles import STYLES, Style
from ._vae import check_vae_output, install_vae_split, vae_to_split

__all__ = ["AUXILIARY_ATTRIBUTES", "DENOISER_ATTRIBUTES", "Parallelized", "parallelize"]

DENOISER_ATTRIBUTES = ("transformer", "transformer_2", "unet", "prior")
"""Pipeline attributes that hold denoisers (``transformer_2`` is Wan 2.2's low-noise expert; ``prior`` the
Kandinsky and Stable Cascade priors and unCLIP's)."""

AUXILIARY_ATTRIBUTES = ("controlnet",)
"""Pipeline attributes of modules that run on the same CFG batch as the denoiser (ControlNet,
MultiControlNet): split too when a plugin names them or inference is on, never refused."""

class Parallelized:
    """What :func:`xcfg.parallelize` returns: the installed wrappers, and the way to undo them.

    Use it as a context manager, or call :meth:`remove`, to restore the pipeline exactly.

    Attributes:
        group: the CFG group the pipeline runs on (size 1 when there is nothing to split across).
        wrapped: one :class:`xcfg.Wrapped` per denoiser (empty when ``group.size == 1``).
        specs: the spec found for each denoiser, keyed by the pipeline attribute name; ``None`` for a
            denoiser no plugin names, whose style is inferred (see :attr:`inferred`).
        layout: the :class:`xcfg.Layout` (cfg x ring x ulysses) when context parallelism was asked for,
            else ``None``.
        mesh: the ``DeviceMesh`` of that layout (dims ``"cfg"``, ``"ring"``, ``"ulysses"``), else ``None``.

    Example:
        >>> import xcfg
        >>> pipe = xcfg.build_example("cogvideox").pipe   # no process group here: nothing is installed
        >>> with xcfg.parallelize(pipe) as handle:
        ...     handle.active
        False
    """

    def __init__(
        self,
        pipe: Any,
        group: CFGGroup,
        specs: dict[str, ModelSpec | None],
        wrapped: list[Wrapped] | None = None,
        undo: list[Callable[[], Any]] | None = None,
    ) -> None:
        self.pipe = pipe
        self.group = group
        self.specs = specs
        self.wrapped = wrapped if wrapped is not None else []
        self._undo = undo if undo is not None else []
        self._removed = False
        self.layout: Layout | None = None  # the cfg x ring x ulysses plan, when context parallelism is on
        self.mesh: Any = None  # its DeviceMesh (dims "cfg", "ring", "ulysses")

    @property
    def active(self) -> bool:
        """Whether the pipeline's CFG batch is split across more than one rank."""
        return bool(self.wrapped) and not self._removed

    @property
    def inferred(self) -> dict[str, ModelSpec | None]:
        """The spec verified so far for each denoiser no plugin names (``None`` until a split was verified,
        or when it could not be)."""
        return {
            name: wrapped.style.inferred_spec()
            for name, wrapped in self._by_name().items()
            if isinstance(wrapped.style, Inferred)
        }

    def plugin_source(self) -> str:
        """The plugin code that would register what inference verified, to paste into your own package.

        Example:
            >>> import xcfg
            >>> handle = xcfg.parallelize(xcfg.build_example("cogvideox").pipe)
            >>> handle.plugin_source()    # one process: nothing was inferred
            ''
        """
        return "\n\n".join(spec_source(spec) for spec in self.inferred.values() if spec is not None)

    def _by_name(self) -> dict[str, Wrapped]:
        return dict(zip(self.specs, self.wrapped))

    def remove(self) -> None:
        """Restore the pipeline: the original forwards, the VAE's decode and the class. Idempotent; no collective."""
        if self._removed:
            return
        self._removed = True
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Parallelized:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        models = ", ".join(f"{k}={v.name if v is not None else 'inferred'}" for k, v in self.specs.items())
        return f"Parallelized({models}, rank {self.group.rank} of {self.group.size}, active={self.active})"


def parallelize(
    pipe: Any,
    *,
    group: CFGGroup | Any | None = None,
    degree: int = 2,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    check_every: int = 0,
    true_cfg: bool = False,
    split_vae: bool = True,
    vae_output: str = "all",
    registry: Registry | None = None,
    infer: bool = True,
    ring_degree: int = 1,
    ulysses_degree: int = 1,
    context_parallel: Any = None,
    mesh: Any = None,
    uneven: str = "auto",
) -> Parallelized:
    """Run the pipeline's classifier-free guidance batch split across the ranks of a CFG group.

    Call it on every rank, after ``torch.distributed.init_process_group`` (or
    :func:`xcfg.init_distributed`) and after moving the pipeline to this rank's device. Everything
    that can be refused is refused here, on every rank, before any collective. With no process group
    or a world of one, nothing is installed and the pipeline behaves exactly as before.

    Args:
        pipe: a diffusers pipeline (its ``transformer``, ``transformer_2`` or ``unet`` are wrapped, and
            its ``controlnet``), or a denoiser module for a hand-written loop.
        group: a :class:`xcfg.CFGGroup`, a ``torch.distributed`` process group whose ranks share the
            CFG batch, or ``None`` to split the default group into groups of ``degree`` ranks.
        degree: ranks per CFG group when ``group`` is ``None``.
        timeout: how long a rank waits for its peers before every rank raises.
        check_every: compare the denoiser inputs across ranks every this many calls, besides the
            first call of each pipeline run; ``0`` compares only the first call.
        true_cfg: you will call the pipeline with true CFG (a negative prompt and ``true_cfg_scale > 1``),
            so a guidance-distilled two-call model (Flux.1-dev, HunyuanVideo) does make an uncond call
            per step; without it such models are refused.
        split_vae: spread the tiles of the VAE's tiled decode across the ranks (each decodes its share,
            then every rank gathers and blends them), for VAEs with a :class:`xcfg.VAESpec` (CogVideoX,
            Mochi, Wan, HunyuanVideo, LTX-Video, LTX-2, ``AutoencoderKL``): the ranks of the CFG group,
            or, with a layout, every rank of the layout (a group xcfg makes over them and destroys at
            ``remove()``). Only a tiled decode is split: enable tiling yourself with
            ``pipe.vae.enable_tiling()``, since it changes the decoded result; a decode without tiling or
            of a latent smaller than one tile runs whole on every rank, as before. ``False`` leaves the
            VAE alone.
        vae_output: where the split decode delivers its result: ``"all"`` ranks (every rank's pipeline
            output is the same), or ``"rank0"`` only, when only rank 0 saves the result (rank 0 of the CFG
            group, or the first rank of a layout); the other ranks skip the blending and their pipeline
            returns zeros of the same shape.
        registry: where to look models up (default: :func:`xcfg.default_registry`).
        infer: a denoiser no plugin names is not refused: its CFG style and the arguments that carry the
            batch are inferred at its first calls, and verified before they are trusted (the first split
            call is also computed whole and compared; the first predicted uncond call is also computed
            for real). What cannot be verified runs whole, with a warning. ``False`` refuses such
            models with :class:`xcfg.UnsupportedModelError`, as a plugin-only registry would.
        ring_degree: ranks that split each sequence with ring attention (diffusers' context parallelism).
        ulysses_degree: ranks that split each sequence with Ulysses attention. With either above 1, the
            world is one layout, ``degree x ring_degree x ulysses_degree`` ranks (see
            :func:`xcfg.plan_layout`): xcfg builds one ``DeviceMesh`` with dims ``"cfg"``, ``"ring"`` and
            ``"ulysses"``, splits the CFG batch over the ``cfg`` dim and hands the other two to diffusers'
            ``enable_parallelism`` on every denoiser.
        context_parallel: a diffusers ``ContextParallelConfig`` instead of the two degrees (its ``mesh``
            is not read; pass ``mesh=`` for that).
        mesh: your own ``DeviceMesh`` with dims named ``"cfg"`` (optional), ``"ring"`` and ``"ulysses"``
            (and any others, not read); xcfg uses it instead of building one and never destroys it.
        uneven: what a sequence the context degree does not divide does: ``"auto"`` (diffusers'
            ``ulysses_anything`` / ``ring_anything``) or ``"even"``; see :func:`xcfg.plan_layout`.

    Returns:
        A :class:`Parallelized` handle; ``handle.remove()`` undoes everything.

    Raises:
        UnsupportedModelError: no plugin knows a denoiser's class and ``infer`` is off.
        UnsupportedPipelineError: the plugin knows the model but not this use of it (its ``refuse``).
        NoCFGError: the model has no uncond/cond pair (guidance-distilled models without ``true_cfg``).
        SetupError: applied twice, a world size ``degree`` does not divide, a two-call model on a group
            that is not 2 ranks, a model on another rank's device, or a backend that cannot carry the
            model's tensors, or a VAE whose decode another handle split already.
        ValueError: ``vae_output`` is neither ``"all"`` nor ``"rank0"``.
        SetupError: with context parallelism, also degrees whose product is not the world size, a model
            with no context-parallel plan, heads no mode divides, an attention backend without
            context-parallel support, or a ControlNet (its residuals would need the same split).

    Example:
        >>> import xcfg
        >>> pipe = xcfg.build_example("cogvideox").pipe
        >>> handle = xcfg.parallelize(pipe)
        >>> handle.specs["transformer"].name
        'CogVideoXTransformer3DModel'
        >>> handle.remove()
    """
    registry = registry or default_registry()
    check_vae_output(vae_output)
    found = _denoisers(pipe, registry, infer)
    attached = _attach_shared(pipe, found)
    if attached is not None:
        return attached
    check_not_parallelized(pipe, found)
    specs = {name: spec_for(name, module, registry, true_cfg=true_cfg, infer=infer) for name, module in found.items()}
    check_pipeline(pipe, found, specs)
    layout = _plan(group, degree, ring_degree, ulysses_degree, context_parallel, mesh, uneven)
    size = layout.cfg if layout is not None else planned_size(group, degree)
    for name, spec in specs.items():
        if spec is not None:
            check_style(spec, size, repr(name))
    if size > 1 or layout is not None:
        check_devices(found, group.group if isinstance(group, CFGGroup) else group)
    handle = Parallelized(pipe, CFGGroup.single(), specs)
    if layout is not None:
        plans = _check_layout(found, specs, layout)  # refusals: before the mesh, the first collective
        cfg_group = _install_layout(handle, found, plans, layout, mesh, timeout)
    else:
        cfg_group = _resolve_group(group, degree, timeout)
    handle.group = cfg_group
    try:  # a failure from here on (a handshake, a group that cannot form) undoes what was installed
        arguments = (cfg_group.size, true_cfg, check_every, split_vae, vae_output, timeout.total_seconds(), infer)
        fingerprint = _fingerprint(specs, arguments)
        session = None
        if cfg_group.size > 1:
            session = Session(cfg_group, check_every=check_every)
            handle._undo.append(lambda: setattr(session, "closed", True))
            devices = session.handshake(_device_index(found), fingerprint)
            check_distinct_gpus(devices, cfg_group.ranks)
        bare = isinstance(pipe, torch.nn.Module)
        if split_vae and not bare:
            _split_vae(handle, cfg_group, session, registry, vae_output, timeout, _device_index(found), fingerprint)
        if session is None:
            return _mark(pipe, handle)
        shared: dict[str, Any] = {}  # what the styles of this pipeline share (the two-call history of Wan 2.2's experts)
        for name, module in found.items():
            spec = specs[name] or ModelSpec(model=type(module), style="two_call")
            style: Style = (Inferred if specs[name] is None else STYLES[spec.style])(spec, type(module), cfg_group, shared)
            wrapped = install(module, style, spec, cfg_group, session)
            handle.wrapped.append(wrapped)
            handle._undo.append(wrapped.remove)
        if not bare:
            handle._undo.append(install_pipeline_hooks(pipe, session, on_run_end=_notice_unsplit(handle)))
    except BaseException:
        handle.remove()
        raise
    return _mark(pipe, handle)


def _split_vae(
    handle: Parallelized, cfg_group: CFGGroup, session: Session | None, registry: Registry, output: str,
    timeout: datetime.timedelta, device: int, fingerprint: int,
) -> None:
    """Split the VAE's tiled decode over the ranks that hold the same latent after the loop: the CFG group, or,
    with a layout, every rank of it (:func:`xcfg._layout.layout_ranks`), through a mesh group xcfg makes, with a
    session of its own under the CFG session, and destroys at ``remove()``."""
    pipe = handle.pipe
    group, vae_session = cfg_group, session
    ranks = layout_ranks(handle.mesh) if handle.mesh is not None else cfg_group.ranks
    if len(ranks) > 1 and tuple(ranks) != cfg_group.ranks:
        if vae_to_split(pipe, registry) is None:
            return  # nothing to split: no group made
        group = mesh_group(ranks, timeout=timeout)
        handle._undo.append(group.destroy)
        vae_session = Session(group, parent=session)
        handle._undo.append(lambda: setattr(vae_session, "closed", True))
        vae_session.handshake(device, fingerprint)  # every rank of the layout splits the decode alike
    remove_vae = install_vae_split(pipe, group, vae_session, registry, output=output)
    if remove_vae is not None:
        handle._undo.append(remove_vae)


def _notice_unsplit(handle: Parallelized) -> Callable[[], None]:
    """After each pipeline call: say once when it split no denoiser call (CFG off, a batch that does not
    divide, a model that runs whole), so that nothing runs unsplit silently."""
    seen = {"split": 0, "calls": 0}

    def check() -> None:
        split = sum(w.style.stats.split for w in handle.wrapped)
        calls = sum(w.style.stats.calls for w in handle.wrapped)
        if calls > seen["calls"] and split == seen["split"]:
            warn_once(
                f"xcfg: a call of {type(handle.pipe).__name__} split none of its {calls - seen['calls']} denoiser calls "
                "across the ranks: every rank computed every call (the same result, no speedup). Usual causes: CFG is "
                "off (guidance_scale <= 1, or no negative prompt for true CFG), a batch that does not divide by the "
                "number of ranks, or a model that runs whole (PAG, a diffusers cache)."
            )
        seen.update(split=split, calls=calls)

    return check


def _denoisers(pipe: Any, registry: Registry, infer: bool) -> dict[str, torch.nn.Module]:
    if isinstance(pipe, torch.nn.Module):
        return {"model": pipe}
    found = {name: getattr(pipe, name, None) for name in DENOISER_ATTRIBUTES}
    found = {name: module for name, module in found.items() if isinstance(module, torch.nn.Module)}
    if not found:
        raise UnsupportedModelError(
            f"xcfg: found no denoiser on {type(pipe).__name__}: it has none of the attributes "
            f"{', '.join(DENOISER_ATTRIBUTES)}. Pass the denoiser module itself: xcfg.parallelize(pipe.my_denoiser)."
        )
    for name in AUXILIARY_ATTRIBUTES:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module) and (infer or registry.lookup(type(module)) is not None):
            found[name] = module
    return found


def _plan(group: Any, degree: int, ring: int, ulysses: int, config: Any, mesh: Any, uneven: str) -> Layout | None:
    """The layout of a call that asks for context parallelism (``None`` otherwise); no collective."""
    from ._errors import SetupError
    from ._layout import layout_from_config, layout_from_mesh, plan_layout

    if config is None and mesh is None and ring == 1 and ulysses == 1:
        return None
    if group is not None:
        raise SetupError(
            "xcfg: pass either group= (CFG parallelism on your process group) or a layout (ring_degree=, "
            "ulysses_degree=, context_parallel= or mesh=), not both; for your own groups with context parallelism "
            "build a DeviceMesh with dims ('cfg', 'ring', 'ulysses') and pass mesh="
        )
    if mesh is not None:
        return layout_from_mesh(mesh, uneven=uneven)
    if not is_initialized():
        raise SetupError(
            "xcfg: context parallelism (ring_degree / ulysses_degree) needs a process group: launch with torchrun "
            "and call xcfg.init_distributed() before parallelize()"
        )
    world = world_size()
    if config is not None:
        return layout_from_config(world, degree, config)
    return plan_layout(world, cfg=degree, ring=ring, ulysses=ulysses, uneven=uneven)


def _check_layout(found: dict[str, torch.nn.Module], specs: dict[str, ModelSpec | None], layout: Layout) -> dict[str, Any]:
    """Every refusal of context parallelism, on every rank, before any collective."""
    from ._errors import SetupError

    if not layout.context_parallel:
        return {}
    plans = {}
    for name, module in found.items():
        if name in AUXILIARY_ATTRIBUTES:
            raise SetupError(
                f"xcfg: the pipeline's {name!r} adds residuals to the denoiser's blocks, which context parallelism "
                "would need split the same way; xcfg does not do that yet. Run it with CFG parallelism only: "
                "parallelize(pipe, degree=2) on 2 ranks."
            )
        plans[name] = check_context_parallel(name, module, specs[name], layout)
    return plans


def _install_layout(
    handle: Parallelized, found: dict[str, torch.nn.Module], plans: dict[str, Any], layout: Layout, mesh: Any,
    timeout: datetime.timedelta,
) -> CFGGroup:
    """Build the mesh (unless given), enable context parallelism on each denoiser and return the CFG group
    of the cfg dim; every step leaves its undo on the handle."""
    owned = mesh is None
    if owned:
        devices = [module_device(m) for m in found.values()]
        device_type = "cuda" if any(d is not None and d.type == "cuda" for d in devices) else "cpu"
        mesh, groups = build_mesh(layout, device_type, timeout)
        handle._undo.append(lambda: destroy_groups(groups))  # runs last: after everything that uses them
    handle.layout, handle.mesh = layout, mesh
    names = mesh.mesh_dim_names
    cfg_group = CFGGroup.single()
    try:
        if layout.cfg > 1:
            cfg_group = CFGGroup.from_group(mesh.get_group(names.index("cfg")), timeout=timeout)
            handle._undo.append(cfg_group.destroy)
        for name, module in found.items():
            if name in plans:
                handle._undo.append(enable_context_parallel(module, plans[name], layout, mesh))
    except BaseException:
        handle.remove()
        raise
    return cfg_group


def _resolve_group(group: Any, degree: int, timeout: datetime.timedelta) -> CFGGroup:
    if isinstance(group, CFGGroup):
        return group
    if group is not None:
        return CFGGroup.from_group(group, timeout=timeout)
    return CFGGroup.create(degree, timeout=timeout)


def _mark(pipe: Any, handle: Parallelized) -> Parallelized:
    if hasattr(pipe, "__dict__"):
        pipe.__dict__["_xcfg_handle"] = handle

        def unmark() -> None:
            if pipe.__dict__.get("_xcfg_handle") is handle:
                del pipe.__dict__["_xcfg_handle"]

        handle._undo.insert(0, unmark)
    return handle


def _device_index(found: dict[str, torch.nn.Module]) -> int:
    """This rank's GPU as one number for the set-up handshake: the host and the cuda index
    (:func:`xcfg._refusals.device_key`), or -1 when the denoisers are not on a GPU."""
    devices = [module_device(m) for m in found.values()]
    index = next((d.index if d.index is not None else torch.cuda.current_device() for d in devices if d and d.type == "cuda"), -1)
    return device_key(index)


def _fingerprint(specs: dict[str, ModelSpec | None], arguments: tuple[Any, ...] = ()) -> int:
    text = ",".join(f"{name}={spec.path if spec else 'inferred'}" for name, spec in sorted(specs.items()))
    return zlib.crc32(f"{text};{arguments!r}".encode()) & 0x7FFFFFFF


def _attach_shared(pipe: Any, found: dict[str, torch.nn.Module]) -> Parallelized | None:
    """A second pipeline on modules another ``parallelize`` wraps (``Pipeline.from_pipe(pipe)``): give it the
    pipeline-call brackets of the session those modules split with, so its calls get the same start and end
    agreement. ``None`` when that is not the case (the refusals then say what is)."""
    from ._hook import HOOK_NAME

    if isinstance(pipe, torch.nn.Module) or "_xcfg_handle" in getattr(pipe, "__dict__", {}):
        return None
    hooks = {}
    for name, module in found.items():
        registry = getattr(module, "_diffusers_hook", None)
        hooks[name] = registry.get_hook(HOOK_NAME) if registry is not None else None
    sessions = {id(h.session): h.session for h in hooks.values() if h is not None}
    if len(sessions) != 1 or any(h is None for h in hooks.values()):
        return None
    session = next(iter(sessions.values()))
    if session is None or session.closed:
        return None
    group = session.group
    session.handshake(_device_index(found), _fingerprint({name: None for name in found}, ("shared",)))
    wrapped = [Wrapped(found[name], hook.style.spec, group, hook) for name, hook in hooks.items()]
    handle = Parallelized(pipe, group, {name: hook.style.spec for name, hook in hooks.items()}, wrapped)
    handle._undo.append(install_pipeline_hooks(pipe, session))
    return _mark(pipe, handle)
