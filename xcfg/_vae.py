"""The VAE decode split: the tiles of a tiled decode are decoded across ranks, then gathered.

The ranks are those of one group that all hold the same latent: the CFG group, or, with a layout
(CFG x ring x Ulysses), every rank of the layout (the mesh group), since after the denoising loop every rank
of the mesh holds the same latent.

A tiled VAE decode is a loop over independent spatial tiles of the latent (each decoded with all its
frames), followed by blending the overlaps. A plugin describes that loop for one VAE family in a
``tiled_decode(vae, z, pmap)`` function (:class:`VAESpec`); the core hands it ``pmap``, which runs a
function on this rank's share of the tiles, lets the ranks agree that every rank finished (so a rank
that fails makes every rank raise instead of leaving the others waiting), and gathers every decoded
tile with one data-plane collective. The plugin then blends, on every rank (or on rank 0 only).

:func:`install_vae_split` puts the split decode on ``pipe.vae`` as the instance attribute
``tiled_decode``, which the VAE's own ``decode`` dispatch calls when tiling is enabled and the latent
is larger than one tile. Removing it deletes the attribute, so the class's method is used again.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from ._errors import RankError, SetupError
from ._group import CFGGroup
from ._session import Session
from ._spec import VAESpec

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["VAE_OUTPUTS", "PMap", "VAESpec", "install_vae_split", "is_vae_split"]

VAE_OUTPUTS = ("all", "rank0")
"""Where :func:`install_vae_split` delivers the decoded result: every rank, or rank 0 only."""

_ATTRIBUTE = "tiled_decode"
_MARK = "_xcfg_vae_split"
_SHAPE_SLOTS = 8


class PMap(Protocol):
    """The work distributor a :class:`VAESpec`'s ``tiled_decode`` receives.

    ``pmap(fn, items, cost=None)`` calls ``fn(item)`` for this rank's share of ``items`` and returns
    the results of every item, in item order, on every rank. The share is decided alike on every rank,
    largest ``cost`` first onto the least loaded rank (every item costs the same when ``cost`` is
    ``None``); use the tile's area, so that the small edge tiles balance the large ones. ``fn`` must
    return a tensor; all results must have the same dtype and may differ in shape.

    When the decoded result goes to rank 0 only (``parallelize(..., vae_output="rank0")``), ``pmap``
    returns ``None`` on the other ranks, and ``tiled_decode`` must then return ``None`` at once (the core
    gives those ranks a placeholder of the result's shape).

    A failure in ``fn`` on any rank makes ``pmap`` raise on every rank: the failing rank re-raises its
    error, the others raise :class:`xcfg.RankFailedError`.

    Example:
        >>> import torch
        >>> def tiled_decode(vae, z, pmap):
        ...     tiles = list(z.split(4, dim=-1))
        ...     decoded = pmap(vae.decoder, tiles, cost=[t.shape[-1] for t in tiles])
        ...     return None if decoded is None else torch.cat(decoded, dim=-1)
    """

    def __call__(
        self, fn: Callable[[Any], torch.Tensor], items: Sequence[Any], *, cost: Sequence[float] | None = None
    ) -> list[torch.Tensor] | None: ...


# -- distribution ------------------------------------------------------------------------------------


def assign(cost: Sequence[float], size: int) -> list[int]:
    """The rank that computes each item: the largest cost first, onto the least loaded rank (ties: the
    lower rank, then the earlier item). Every rank computes the same answer from the same costs."""
    load = [0.0] * size
    owners = [0] * len(cost)
    for index in sorted(range(len(cost)), key=lambda k: (-cost[k], k)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += cost[index]
    return owners


class _Distributor:
    """A :class:`PMap` for one decode: splits the items, agrees through the session, gathers."""

    def __init__(self, group: CFGGroup, session: Session, root_only: bool, device: torch.device) -> None:
        self.group = group
        self.session = session
        self.root_only = root_only
        self.device = device
        self.items = 0
        self.dtype: torch.dtype | None = None
        self.owes_round = False  # returned tiles: a failure from here on must be announced to the peers

    def __call__(
        self, fn: Callable[[Any], torch.Tensor], items: Sequence[Any], *, cost: Sequence[float] | None = None
    ) -> list[torch.Tensor] | None:
        items = list(items)
        cost = [1.0] * len(items) if cost is None else [float(c) for c in cost]
        if len(cost) != len(items):
            raise ValueError(f"pmap: {len(cost)} costs for {len(items)} items")
        self.owes_round = False
        if not items:
            return []
        group, session = self.group, self.session
        owners = assign(cost, group.size)
        mine = [k for k, owner in enumerate(owners) if owner == group.rank]
        self.items = len(items)
        local: list[torch.Tensor] = []
        try:
            for k in mine:
                out = fn(items[k])
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"pmap: fn returned {type(out).__name__} for item {k}; it must return a tensor")
                if local and out.dtype != local[0].dtype:
                    raise TypeError(f"pmap: fn returned {out.dtype} for item {k} but {local[0].dtype} before")
                local.append(out)
        except BaseException as err:
            if not isinstance(err, RankError):  # a RankError came from a round every rank took part in
                session.after_work(len(items), err)
            raise
        session.after_work(len(items), None)
        try:
            with group.labelled(f"gathering {len(items)} decoded VAE tiles"):
                results = self._gather(local, owners)
        except BaseException as err:  # out of memory for the gathered tiles, ...: every rank raises here
            session.fail_collective(err, f"gathering {len(items)} decoded VAE tiles")
            raise  # not reached
        self.owes_round = True
        return results

    def _gather(self, local: list[torch.Tensor], owners: list[int]) -> list[torch.Tensor] | None:
        group = self.group
        where = f"gathering {len(owners)} decoded VAE tiles"
        mine = (local[0].dtype if local else None, [tuple(t.shape) for t in local])
        everyone = group.gather_objects(mine, where)
        dtypes = {d for d, _ in everyone if d is not None}
        if len(dtypes) > 1:
            raise RuntimeError(f"xcfg: the ranks decoded VAE tiles of different dtypes: {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else torch.get_default_dtype()
        counts = [sum(math.prod(s) for s in shapes) for _, shapes in everyone]
        longest = max(counts)
        buffer = torch.empty(longest, dtype=self.dtype, device=self.device)
        offset = 0
        for tile in local:
            buffer[offset : offset + tile.numel()].view(tile.shape).copy_(tile)
            offset += tile.numel()
        local.clear()
        if self.root_only:
            chunks = group.gather_to_root(buffer)
            if chunks is None:
                return None
        else:
            chunks = list(group.all_gather(buffer).view(group.size, longest).unbind(0))
        results: list[Any] = [None] * len(owners)
        for rank, (_, shapes) in enumerate(everyone):
            indices = [k for k, owner in enumerate(owners) if owner == rank]
            offset = 0
            for k, shape in zip(indices, shapes):
                numel = math.prod(shape)
                results[k] = chunks[rank][offset : offset + numel].view(shape)
                offset += numel
        return results


# -- the installed split -----------------------------------------------------------------------------


class _Split:
    """The replacement of one VAE's ``tiled_decode``: the plugin's tile loop over a distributor."""

    def __init__(
        self, vae: torch.nn.Module, spec: VAESpec, group: CFGGroup, session: Session, output: str, original: Any
    ) -> None:
        self.vae = vae
        self.spec = spec
        self.group = group
        self.session = session
        self.root_only = output == "rank0"
        self.original = original
        self.signature = inspect.signature(original)

    def __call__(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling() or self._records_gradients(z):
            return self.original(z, *args, **kwargs)  # no collectives in a graph or under autograd
        bound = self.signature.bind(z, *args, **kwargs)
        bound.apply_defaults()
        inputs = dict(bound.arguments)
        inputs.pop(next(iter(self.signature.parameters)))  # the latent
        return_dict = inputs.pop("return_dict", True)
        sample = self.decode(z, inputs)
        if not return_dict:
            return (sample,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=sample)

    def _records_gradients(self, z: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return z.requires_grad or any(p.requires_grad for p in self.vae.parameters())

    def decode(self, z: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        if not self.session.in_pipeline_call:  # a session of its own (the mesh group's) or a decode outside a
            self.session.aborted = False       # pipeline call: each decode is its own agreement
        pmap = _Distributor(self.group, self.session, self.root_only, z.device)
        try:
            sample = self.spec.tiled_decode(self.vae, z, pmap, **inputs)
        except BaseException as err:
            # rank 0 blends alone: the others wait for its result's shape, so tell them it failed
            if self.root_only and pmap.owes_round and not isinstance(err, RankError):
                self.session.after_work(pmap.items, err)
            raise
        if not (self.root_only and pmap.owes_round):
            if sample is None:
                raise TypeError(f"xcfg: the tiled_decode of the VAE spec for {self.spec.name} returned None")
            return sample
        header = [0] * (_SHAPE_SLOTS + 1)
        error = None
        if self.group.rank == 0:
            if isinstance(sample, torch.Tensor) and sample.dim() <= _SHAPE_SLOTS:
                header[: sample.dim() + 1] = [sample.dim(), *sample.shape]
            else:
                error = TypeError(f"xcfg: the tiled_decode of the VAE spec for {self.spec.name} returned {sample!r}")
        self.session.after_work(pmap.items, error)  # raises on every rank if rank 0 has no result
        row = self.group.exchange(header, "sharing the decoded VAE result's shape")[0]
        if self.group.rank == 0:
            return sample
        shape = row[1 : row[0] + 1]
        return torch.zeros((), dtype=pmap.dtype, device=z.device).expand(shape)


def is_vae_split(vae: Any) -> bool:
    """Whether ``vae`` carries xcfg's split decode."""
    return isinstance(vae, torch.nn.Module) and getattr(vae.__dict__.get(_ATTRIBUTE), _MARK, None) is not None


def install_vae_split(
    pipe: Any,
    group: CFGGroup,
    session: Session | None = None,
    registry: Registry | None = None,
    *,
    output: Literal["all", "rank0"] = "all",
) -> Callable[[], None] | None:
    """Split the tiled decode of ``pipe.vae`` across the ranks of ``group``.

    :func:`xcfg.parallelize` calls it with the CFG group, or, with a layout, with a group over every rank
    of the layout (the mesh group, with its own session); call it directly for a hand-written loop. It
    sets the VAE's instance attribute ``tiled_decode``, which the VAE's own ``decode`` calls only when
    tiling is enabled (``vae.enable_tiling()``) and the latent is larger than one tile; that call then
    decodes this rank's share of the tiles, gathers all of them and blends. A decode without tiling, or
    of a latent smaller than one tile, runs whole on every rank as before, as does a decode under
    ``torch.compile`` or one that records gradients (grad mode on while the latent or the VAE's
    parameters require grad; pipelines decode under ``torch.no_grad``). The result equals the 1-process
    tiled decode up to rounding. ``inspect.signature(vae.tiled_decode)`` is unchanged.

    Args:
        pipe: a pipeline with a ``vae`` attribute, or the VAE itself.
        group: the ranks that decode together, every one of which holds the same latent (the CFG group,
            or the mesh group of a layout); with one rank nothing is installed.
        session: the control protocol over ``group`` (the one shared with the denoiser wrappers when
            ``group`` is the CFG group); ``None`` makes a new one. A rank that fails decoding its tiles
            makes every rank of ``group`` raise before the gather.
        registry: where to look the VAE's class up (default: :func:`xcfg.default_registry`).
        output: ``"all"``: every rank gets the decoded result. ``"rank0"``: only rank 0 of ``group`` does, and
            the other ranks skip the blending and get zeros of the result's shape, dtype and device,
            as a read-only expanded view of one element (no memory), so the pipeline's post-processing
            still runs there; ``.clone()`` it before writing to it.

    Returns:
        A function that removes the split and restores the VAE exactly, or ``None`` when nothing was
        installed (one rank, no VAE, no :class:`xcfg.VAESpec` for its class, a subclass with its
        own ``tiled_decode``, or a VAE whose ``tiled_decode`` something else replaced already).

    Raises:
        ValueError: ``output`` is not one of ``"all"``, ``"rank0"``.
        SetupError: the VAE's decode is split already.

    Example:
        >>> import xcfg
        >>> pipe = xcfg.build_example("cogvideox").pipe
        >>> xcfg.install_vae_split(pipe, xcfg.CFGGroup.single()) is None   # one rank: nothing to split
        True
    """
    check_vae_output(output)
    if group.size == 1:
        return None
    found = vae_to_split(pipe, registry)
    if found is None:
        return None
    vae, spec = found
    original = getattr(vae, _ATTRIBUTE)
    split = _Split(vae, spec, group, session or Session(group), output, original)

    @functools.wraps(original)
    def tiled_decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return split(z, *args, **kwargs)

    setattr(tiled_decode, _MARK, split)
    vae.__dict__[_ATTRIBUTE] = tiled_decode

    def remove() -> None:
        if vae.__dict__.get(_ATTRIBUTE) is tiled_decode:
            del vae.__dict__[_ATTRIBUTE]

    return remove


def vae_to_split(pipe: Any, registry: Registry | None = None) -> tuple[torch.nn.Module, VAESpec] | None:
    """The VAE of ``pipe`` (or ``pipe`` itself, a VAE) and its :class:`xcfg.VAESpec`, when its tiled decode can be
    split; ``None`` otherwise (no VAE, no spec for its class, a subclass with its own ``tiled_decode``, or a
    ``tiled_decode`` something else replaced already). No collective: every rank answers alike for the same
    pipeline, so :func:`xcfg.parallelize` asks before it makes a group for the decode.

    Raises:
        SetupError: the VAE's decode is split already.
    """
    vae = getattr(pipe, "vae", None)
    if vae is None and isinstance(pipe, torch.nn.Module) and hasattr(pipe, _ATTRIBUTE):
        vae = pipe
    if not isinstance(vae, torch.nn.Module):
        return None
    if is_vae_split(vae):
        raise SetupError(
            f"xcfg: the decode of this {type(vae).__name__} is split already (a VAE shared by two pipelines?); "
            "remove the first handle before splitting it again"
        )
    if registry is None:
        from ._registry import default_registry

        registry = default_registry()
    entry = registry.lookup(type(vae), kind=VAESpec)
    if entry is None or _ATTRIBUTE in vae.__dict__:
        return None
    spec: VAESpec = entry.spec  # type: ignore[assignment]
    if getattr(type(vae), _ATTRIBUTE, None) is not getattr(spec.resolve(), _ATTRIBUTE, None):
        return None  # a subclass with its own tiled decode: the plugin's tiles may not be its tiles
    return vae, spec


def check_vae_output(output: str) -> None:
    """Refuse an unknown ``output``.

    Raises:
        ValueError: naming the accepted values.
    """
    if output not in VAE_OUTPUTS:
        raise ValueError(f"xcfg: vae_output must be one of {', '.join(map(repr, VAE_OUTPUTS))}, not {output!r}")
