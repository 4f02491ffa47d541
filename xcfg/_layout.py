"""Layouts: how the ranks of a world are shared between CFG parallelism and context parallelism.

A layout is planned by a pure function (:func:`plan_layout`, no processes, no collectives), in the style of
torchtitan's ``ParallelDims``: it validates the degrees against the world size, names the mesh dims
(``"cfg"``, ``"ring"``, ``"ulysses"``, outermost first) and says what to launch instead when they do not
fit. :func:`build_mesh` then builds the one ``DeviceMesh`` of the plan; :func:`enable_context_parallel`
hands its ring/ulysses dims to diffusers' ``enable_parallelism`` on a denoiser and returns the undo.

The order of the dims is the order of the traffic: the ``cfg`` dim (one all-gather per denoiser call) is
outermost, so a CFG pair spans the farthest ranks (two nodes, when there are two); ``ulysses`` (four
all-to-alls per attention layer) is innermost, so its ranks are neighbours on one node.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import SetupError
from ._group import SequenceGroup

__all__ = ["DIM_NAMES", "ContextParallelSpec", "Layout", "layout_from_mesh", "plan_layout", "sequence_share"]

DIM_NAMES = ("cfg", "ring", "ulysses")
"""The names of the mesh dims xcfg builds and reads, outermost first."""


@dataclass(frozen=True)
class ContextParallelSpec:
    """How a plugin makes a denoiser class context-parallel, for a model diffusers ships no ``_cp_plan`` for.

    Attributes:
        plan: a diffusers ``ContextParallelModelPlan``: module names mapped to the
            ``ContextParallelInput`` splits and ``ContextParallelOutput`` gathers diffusers' hooks apply; or a
            function that returns it, called when the plan is first needed (so that a plugin module does not
            import diffusers when it is loaded).
        processors: installs attention processors that go through diffusers' ``dispatch_attention_fn``
            with the parallel config on the module, and returns the function that puts the old ones back;
            ``None`` when the model's own processors already do.
        refuse: ``refuse(module)`` says why this instance cannot be made context-parallel (a processor
            the plan was not written for, a model diffusers' own plan does not split correctly), or
            ``None``; asked on every rank before any collective, for any ring or Ulysses degree. The
            reason is a clause; xcfg adds what to launch instead.

    Example:
        >>> from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
        >>> import xcfg
        >>> spec = xcfg.ContextParallelSpec(plan={
        ...     "": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
        ...     "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        ... })
        >>> sorted(spec.plan)
        ['', 'proj_out']
    """

    plan: dict[str, Any] | Callable[[], dict[str, Any]]
    processors: Callable[[torch.nn.Module], Callable[[], None]] | None = None
    refuse: Callable[[torch.nn.Module], str | None] | None = None

    def model_plan(self) -> dict[str, Any]:
        """The plan itself (calling ``plan`` when it is a function)."""
        return self.plan() if callable(self.plan) else self.plan


@dataclass(frozen=True)
class Layout:
    """A plan of the world: CFG degree x ring degree x ulysses degree, with the uneven-sequence policy.

    Ranks are laid out row-major over ``(cfg, ring, ulysses)``: global rank
    ``r = (c * ring + i) * ulysses + u``. Build one with :func:`plan_layout` (it validates) or
    :func:`layout_from_mesh`.

    Attributes:
        world_size: the ranks the layout spans.
        cfg: ranks sharing one CFG batch (1: no CFG parallelism).
        ring: ranks of ring attention.
        ulysses: ranks of Ulysses attention.
        ulysses_anything: diffusers' Ulysses for any sequence length and head count.
        ring_anything: diffusers' ring attention for any sequence length.

    Example:
        >>> import xcfg
        >>> layout = xcfg.plan_layout(8, cfg=2, ulysses=4)
        >>> layout.shape, layout.describe()
        ((2, 1, 4), 'cfg 2 x ulysses 4 (8 ranks)')
        >>> layout.cfg_ranks(5), layout.context_ranks(5)
        ((1, 5), (4, 5, 6, 7))
    """

    world_size: int
    cfg: int = 1
    ring: int = 1
    ulysses: int = 1
    ulysses_anything: bool = False
    ring_anything: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """The mesh shape, in the order of the dim names ``("cfg", "ring", "ulysses")``."""
        return (self.cfg, self.ring, self.ulysses)

    @property
    def dim_names(self) -> tuple[str, str, str]:
        """The mesh dim names, ``("cfg", "ring", "ulysses")``."""
        return DIM_NAMES

    @property
    def context_degree(self) -> int:
        """Ranks that share one sequence (ring x ulysses)."""
        return self.ring * self.ulysses

    @property
    def context_parallel(self) -> bool:
        """Whether the sequence is split (a ring or ulysses degree above 1)."""
        return self.context_degree > 1

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """The ``(cfg, ring, ulysses)`` coordinates of a global rank."""
        return (rank // (self.ring * self.ulysses), rank // self.ulysses % self.ring, rank % self.ulysses)

    def cfg_ranks(self, rank: int) -> tuple[int, ...]:
        """The global ranks of ``rank``'s CFG group (same ring and ulysses coordinates), in group order."""
        step = self.context_degree
        return tuple(rank % step + c * step for c in range(self.cfg))

    def context_ranks(self, rank: int) -> tuple[int, ...]:
        """The global ranks that share ``rank``'s sequence (same cfg coordinate), in order."""
        first = rank - rank % self.context_degree
        return tuple(range(first, first + self.context_degree))

    def describe(self) -> str:
        """A short name: ``"cfg 2 x ulysses 2 (4 ranks)"``."""
        parts = [f"{name} {size}" for name, size in zip(DIM_NAMES, self.shape) if size > 1] or ["1 rank"]
        return " x ".join(parts) + f" ({self.world_size} ranks)"

    def context_parallel_config(self, mesh: Any = None) -> Any:
        """The diffusers ``ContextParallelConfig`` of the ring/ulysses dims (``None`` without them)."""
        if not self.context_parallel:
            return None
        from diffusers import ContextParallelConfig

        return ContextParallelConfig(
            ring_degree=self.ring, ulysses_degree=self.ulysses, mesh=mesh,
            ulysses_anything=self.ulysses_anything, ring_anything=self.ring_anything,
        )

    def check_heads(self, heads: int | None, what: str) -> None:
        """Refuse a model whose attention heads the Ulysses degree does not divide (and no mode covers).

        Raises:
            SetupError: with the layouts that divide them.
        """
        if heads is None or self.ulysses == 1 or heads % self.ulysses == 0:
            return
        pad = -heads % self.ulysses  # ulysses_anything pads the heads, by less than one rank's share
        if self.ulysses_anything and pad < (heads + pad) // self.ulysses:
            return
        fits = [d for d in (2, 4, 8) if heads % d == 0 and d <= self.context_degree]
        raise SetupError(
            f"xcfg: {what} has {heads} attention heads, which the ulysses degree {self.ulysses} does not divide "
            f"(Ulysses gives each rank heads/{self.ulysses}). Use "
            + (f"ulysses_degree in {fits} with the rest as ring_degree, " if fits else "")
            + f"or ring_degree={self.context_degree} (ring splits the sequence, not the heads)"
            + ("." if self.ulysses_anything else ", or ulysses_anything (uneven='auto', ring_degree=1) for uneven heads.")
        )


def plan_layout(
    world_size: int,
    *,
    cfg: int = 2,
    ring: int = 1,
    ulysses: int = 1,
    uneven: str = "auto",
) -> Layout:
    """Plan the layout of ``world_size`` ranks: validate the degrees and name the mesh dims; no processes.

    Args:
        world_size: the number of ranks (``torch.distributed.get_world_size()``).
        cfg: ranks per CFG group (2: the uncond and cond halves on two ranks; 1: none).
        ring: ring-attention degree.
        ulysses: Ulysses-attention degree.
        uneven: the policy for sequences the context degree does not divide. ``"auto"`` turns on
            diffusers' ``ulysses_anything`` (Ulysses only) or ``ring_anything`` (ring only), which split
            any length (and, for Ulysses, any head count) at the cost of a small all-gather of the local
            sizes at each split; with both ring and ulysses above 1 neither exists and the sequence must
            divide. ``"even"`` keeps diffusers' even split: a sequence that does not divide fails at its
            first call.

    Returns:
        The :class:`Layout`.

    Raises:
        SetupError: a degree below 1, or degrees whose product is not ``world_size`` (the message lists
            the layouts that fit this world and the launch that fits these degrees).

    Example:
        >>> import xcfg
        >>> xcfg.plan_layout(4, cfg=2, ulysses=2).shape
        (2, 1, 2)
        >>> xcfg.plan_layout(4, cfg=2, ulysses=2).ulysses_anything
        True
    """
    for name, value in (("cfg", cfg), ("ring", ring), ("ulysses", ulysses), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SetupError(f"xcfg: the {name} degree must be a whole number, at least 1, not {value!r}")
    if uneven not in ("auto", "even"):
        raise SetupError(f"xcfg: uneven must be 'auto' or 'even', not {uneven!r}")
    product = cfg * ring * ulysses
    if product != world_size:
        asked = " x ".join(f"{n} {s}" for n, s in zip(DIM_NAMES, (cfg, ring, ulysses)))
        raise SetupError(
            f"xcfg: the layout {asked} needs {product} ranks, but the world has {world_size}. Launch "
            f"torchrun --nproc-per-node {product}, or pick degrees whose product is {world_size}: "
            + "; ".join(_fitting(world_size))
            + "."
        )
    anything = uneven == "auto"
    return Layout(
        world_size=world_size, cfg=cfg, ring=ring, ulysses=ulysses,
        ulysses_anything=anything and ulysses > 1 and ring == 1,
        ring_anything=anything and ring > 1 and ulysses == 1,
    )


def _fitting(world_size: int) -> list[str]:
    """Layouts of ``world_size`` ranks, CFG first, as parallelize() keyword arguments."""
    out = []
    for cfg in (2, 1):
        if world_size % cfg:
            continue
        rest = world_size // cfg
        kwargs = f"degree={cfg}" + (f", ulysses_degree={rest}" if rest > 1 else "")
        out.append(f"parallelize(pipe, {kwargs})")
    return out or [f"parallelize(pipe, degree=1, ulysses_degree={world_size})"]


def layout_from_config(world_size: int, cfg: int, config: Any) -> Layout:
    """The layout of a CFG degree and a diffusers ``ContextParallelConfig`` (its ``mesh`` is not read).

    Raises:
        SetupError: as :func:`plan_layout`.
    """
    layout = plan_layout(world_size, cfg=cfg, ring=config.ring_degree or 1, ulysses=config.ulysses_degree or 1,
                         uneven="even")
    return Layout(world_size, layout.cfg, layout.ring, layout.ulysses,
                  ulysses_anything=bool(config.ulysses_anything), ring_anything=bool(config.ring_anything))


def layout_from_mesh(mesh: Any, *, uneven: str = "auto") -> Layout:
    """The layout of a user's ``DeviceMesh`` whose dims are named ``"cfg"``, ``"ring"`` and ``"ulysses"``.

    ``"cfg"`` may be missing (no CFG parallelism); other dims are allowed (the mesh may also carry FSDP or
    replicas) and are not read.

    Raises:
        SetupError: a mesh without names, or without ``"ring"`` and ``"ulysses"`` dims.

    Example:
        >>> import xcfg
        >>> class FakeMesh:   # a DeviceMesh's names and sizes, without processes
        ...     mesh_dim_names = ("cfg", "ring", "ulysses")
        ...     shape = (2, 1, 2)
        ...     def size(self, dim=None): return 4 if dim is None else self.shape[dim]
        >>> xcfg.layout_from_mesh(FakeMesh()).describe()
        'cfg 2 x ulysses 2 (4 ranks)'
    """
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if "ring" not in names or "ulysses" not in names:
        raise SetupError(
            f"xcfg: a mesh passed as parallelize(pipe, mesh=...) needs dims named 'ring' and 'ulysses' (and 'cfg' "
            f"for CFG parallelism), size 1 for one not used; this one has {names or 'no names'}. Build it with "
            "torch.distributed.init_device_mesh('cuda', (2, 1, 2), mesh_dim_names=('cfg', 'ring', 'ulysses'))."
        )
    sizes = {name: mesh.size(names.index(name)) for name in names}
    cfg, ring, ulysses = sizes.get("cfg", 1), sizes["ring"], sizes["ulysses"]
    layout = plan_layout(cfg * ring * ulysses, cfg=cfg, ring=ring, ulysses=ulysses, uneven=uneven)
    return layout


# -- refusals, before any collective ------------------------------------------------------------------


def context_parallel_spec(module: torch.nn.Module, spec: Any) -> ContextParallelSpec | None:
    """The plugin's :class:`ContextParallelSpec` for ``module``, else diffusers' own ``_cp_plan``, else ``None``."""
    own = getattr(spec, "context_parallel", None) if spec is not None else None
    if own is not None:
        return own
    plan = getattr(type(module), "_cp_plan", None)
    return ContextParallelSpec(plan=plan) if plan else None


def attention_heads(module: torch.nn.Module) -> int | None:
    """The model's attention heads, from its config (``None`` when it does not say)."""
    config = getattr(module, "config", None)
    for key in ("num_attention_heads", "num_heads", "attention_heads"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_context_parallel(name: str, module: torch.nn.Module, spec: Any, layout: Layout) -> ContextParallelSpec:
    """Refuse a denoiser that cannot run with ``layout``'s context parallelism; return its plan.

    Raises:
        SetupError: no plan (neither diffusers nor a plugin has one), heads no mode divides, an attention
            backend without context-parallel support (or, for ring attention, without the log-sum-exp it
            needs), or a model diffusers has already parallelized.
    """
    what = f"the pipeline's {name!r} ({type(module).__name__})"
    cls = type(module).__name__
    instead = "Run it with CFG parallelism only: parallelize(pipe, degree=2) on 2 ranks (torchrun --nproc-per-node 2)"
    cp = context_parallel_spec(module, spec)
    if cp is None:
        raise SetupError(
            f"xcfg: {what} has no context-parallel plan: diffusers ships no _cp_plan for {cls} and no xcfg plugin "
            f"declares one (ModelSpec(context_parallel=xcfg.ContextParallelSpec(plan=...))). {instead}."
        )
    if getattr(module, "_parallel_config", None) is not None:
        raise SetupError(
            f"xcfg: {what} is already context-parallel (enable_parallelism or from_pretrained(parallel_config=...)). "
            "Load it without a parallel config and let parallelize() apply the layout."
        )
    layout.check_heads(attention_heads(module), what)
    reason = cp.refuse(module) if cp.refuse is not None else None
    if reason:
        raise SetupError(f"xcfg: {what} cannot be made context-parallel: {reason}. {instead}.")
    if cp.processors is None:
        _check_backend(what, module, layout, instead)
    return cp


def _check_backend(what: str, module: torch.nn.Module, layout: Layout, instead: str) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    for m in module.modules():
        processor = getattr(m, "processor", None)
        if processor is None:
            continue
        if not hasattr(processor, "_parallel_config"):
            raise SetupError(
                f"xcfg: {what} uses the attention processor {type(processor).__name__}, which does not go through "
                f"diffusers' dispatch_attention_fn, so the sequence cannot be split. {instead}."
            )
        backend = getattr(processor, "_attention_backend", None)
        backend = AttentionBackendName(backend) if backend is not None else _AttentionBackendRegistry.get_active_backend()[0]
        check_backend(backend.value, layout, what)
        return


def check_backend(backend: str, layout: Layout, what: str = "the model") -> None:
    """Refuse an attention backend that cannot carry ``layout``'s context parallelism.

    Raises:
        SetupError: a backend without context-parallel support, or ring attention on a backend that
            returns no log-sum-exp (``native``).

    Example:
        >>> import xcfg
        >>> from xcfg._layout import check_backend
        >>> check_backend("native", xcfg.plan_layout(2, cfg=1, ulysses=2))   # Ulysses on native: fine
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    supported = sorted(_AttentionBackendRegistry._supports_context_parallel)
    if backend not in supported:
        raise SetupError(
            f"xcfg: {what} uses the attention backend {backend!r}, which has no context-parallel support. Call "
            f"model.set_attention_backend(...) with one of {supported} before parallelize(), or run it with CFG "
            "parallelism only: parallelize(pipe, degree=2) on 2 ranks."
        )
    if layout.ring > 1 and backend in ("native", "_native_npu"):
        raise SetupError(
            f"xcfg: {what} uses the attention backend {backend!r}, which returns no log-sum-exp, so ring attention "
            f"cannot merge its partial results. Use ulysses_degree={layout.context_degree} (ring_degree=1) instead, "
            "or set a backend with one (model.set_attention_backend('_native_cudnn'), 'flash', '_native_flash')."
        )


# -- the mesh and diffusers' context parallelism ------------------------------------------------------


def build_mesh(layout: Layout, device_type: str, timeout: datetime.timedelta) -> tuple[Any, list[Any]]:
    """Build the one ``DeviceMesh`` of ``layout`` (a collective over the world) and its flattened
    ring x ulysses dim; return the mesh and the process groups it created (for :func:`destroy_groups`).

    Every group waits at most ``timeout`` for a peer, like xcfg's own groups.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    override = {name: _options(device_type, timeout) for name in DIM_NAMES}
    mesh = init_device_mesh(device_type, layout.shape, mesh_dim_names=DIM_NAMES, backend_override=override)
    flat = mesh["ring", "ulysses"]._flatten(backend_override=_options(device_type, timeout))
    default = dist.distributed_c10d._get_default_group()
    groups = []
    for pg in [mesh.get_group(name) for name in DIM_NAMES] + [flat.get_group()]:
        if pg is not default and all(pg is not g for g in groups):
            groups.append(pg)
    return mesh, groups


def layout_ranks(mesh: Any) -> tuple[int, ...]:
    """The global ranks of this rank's layout in ``mesh``: every rank with this rank's coordinates on the dims
    xcfg does not read (a user's replica or FSDP dims), in the mesh's order; for a mesh of only ``"cfg"``,
    ``"ring"`` and ``"ulysses"``, all its ranks. These ranks run one pipeline call together and hold the same
    latent after the loop. No collective.

    Example:
        >>> import torch
        >>> from xcfg._layout import layout_ranks
        >>> class FakeMesh:   # a DeviceMesh's names, ranks and this rank's coordinates, without processes
        ...     mesh_dim_names = ("replica", "cfg", "ring", "ulysses")
        ...     mesh = torch.arange(8).view(2, 2, 1, 2)
        ...     def get_coordinate(self): return [1, 0, 0, 1]   # global rank 5
        >>> layout_ranks(FakeMesh())
        (4, 5, 6, 7)
    """
    index = tuple(
        slice(None) if name in DIM_NAMES else coordinate
        for name, coordinate in zip(mesh.mesh_dim_names, mesh.get_coordinate())
    )
    return tuple(int(r) for r in mesh.mesh[index].flatten().tolist())


def _options(device_type: str, timeout: datetime.timedelta) -> Any:
    import torch.distributed as dist

    if device_type == "cuda" and dist.is_nccl_available():
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return ("nccl", options)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    return ("gloo", options)


def destroy_groups(groups: list[Any]) -> None:
    """Destroy process groups xcfg created (never the default group)."""
    import torch.distributed as dist

    for pg in groups:
        try:
            dist.destroy_process_group(pg)
        except Exception:  # the default group (and with it every group) may be gone already
            pass
    groups.clear()


def enable_context_parallel(module: torch.nn.Module, cp: ContextParallelSpec, layout: Layout, mesh: Any) -> Callable[[], None]:
    """Install ``cp``'s processors, then diffusers' ``enable_parallelism`` with the mesh's ring/ulysses dims;
    return the undo (diffusers offers none: it removes the split/gather hooks with
    ``remove_context_parallel`` and restores the processors' and the model's ``_parallel_config``)."""
    from diffusers.hooks.context_parallel import remove_context_parallel

    restore_processors = cp.processors(module) if cp.processors is not None else None
    before = [(m.processor, m.processor._parallel_config) for m in module.modules()
              if hasattr(getattr(m, "processor", None), "_parallel_config")]
    had_own = "_parallel_config" in module.__dict__
    try:
        module.enable_parallelism(config=layout.context_parallel_config(mesh), cp_plan=cp.model_plan())
        if layout.ulysses_anything or layout.ring_anything:
            _padded_gathers(module, cp.model_plan(), module._parallel_config.context_parallel_config)
    except BaseException:
        if restore_processors is not None:
            restore_processors()
        raise

    def undo() -> None:
        remove_context_parallel(module, cp.model_plan())
        for processor, config in before:
            processor._parallel_config = config
        if not had_own:
            module.__dict__.pop("_parallel_config", None)
        if restore_processors is not None:
            restore_processors()

    return undo


def _padded_gathers(module: torch.nn.Module, plan: dict[str, Any], config: Any) -> None:
    """Replace diffusers' gathers of uneven shares (``ulysses_anything`` / ``ring_anything``), which call
    ``all_gather`` with tensors of different sizes (NCCL takes it, gloo refuses it), with one all-gather of
    shares padded to the largest, trimmed after; same hook names, so ``remove_context_parallel`` removes them."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.context_parallel import (
        _CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE,
        ContextParallelOutput,
        _get_submodule_by_name,
    )

    for module_id, entry in plan.items():
        if isinstance(entry, dict):
            continue
        outputs = [entry] if isinstance(entry, ContextParallelOutput) else list(entry)
        targets = _get_submodule_by_name(module, module_id)
        for target in targets if isinstance(targets, list) else [targets]:
            registry = HookRegistry.check_if_exists_or_initialize(target)
            name = _CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE.format(module_id)
            registry.remove_hook(name, recurse=False)
            registry.register_hook(_padded_gather_hook(outputs, config, module_id), name)


def _padded_gather_hook(outputs: list[Any], config: Any, module_id: str) -> Any:
    """A diffusers hook that gathers a module's outputs along their ``gather_dim`` through the sequence group's
    :meth:`~xcfg._group.SequenceGroup.all_gather_uneven` (made here so that importing xcfg's specs does not
    import diffusers)."""
    from diffusers.hooks import ModelHook

    sequence = SequenceGroup.of(config)
    where = f"gathering the uneven context-parallel output of {module_id or 'the model'!r}"

    class PaddedGatherHook(ModelHook):
        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            single = isinstance(output, torch.Tensor)
            items = [output] if single else list(output)
            for i, spec in enumerate(outputs):
                if spec is not None:
                    items[i] = sequence.all_gather_uneven(items[i], spec.gather_dim, where=where)
            return items[0] if single else type(output)(items)

    return PaddedGatherHook()


def sequence_share(tensor: torch.Tensor, dim: int, parallel_config: Any) -> torch.Tensor:
    """This rank's share of ``tensor`` along ``dim`` under the context parallelism of ``parallel_config``.

    For a plugin's attention processor that holds something over the whole sequence (a key mask, a prompt
    mask) while diffusers' plan split the tokens: the ranks that share one sequence split it as
    ``tensor.tensor_split(n, dim)`` in their order (uneven lengths give the larger shares to the lower
    ranks, as diffusers' ``ulysses_anything`` and ``ring_anything`` split), and this returns this rank's
    part. Plugins never touch process groups; this is how they learn their place along the sequence.

    Args:
        tensor: the whole-sequence tensor.
        dim: the sequence dim of ``tensor``.
        parallel_config: the processor's (or the model's) ``_parallel_config``, a diffusers
            ``ParallelConfig``, or its ``ContextParallelConfig``; ``None`` without context parallelism.

    Returns:
        This rank's share; ``tensor`` itself when the sequence is not split.

    Example:
        >>> import torch
        >>> import xcfg
        >>> mask = torch.tensor([[1, 1, 1, 0, 0]])
        >>> xcfg.sequence_share(mask, -1, None).tolist()   # no context parallelism: the whole mask
        [[1, 1, 1, 0, 0]]
    """
    return SequenceGroup.of(parallel_config).share(tensor, dim)
