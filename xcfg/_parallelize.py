"""``xcfg.parallelize(pipe)``: find the denoisers, refuse what cannot work, install the wrappers."""

from __future__ import annotations

import datetime
import os
import zlib
from typing import Any

import torch
import torch.distributed as dist

from ._errors import NoCFGError, SetupError, UnsupportedModelError, UnsupportedPipelineError
from ._group import DEFAULT_TIMEOUT, CFGGroup, backend_for, check_world_size
from ._pipeline import install_pipeline_hooks, is_hooked
from ._registry import Registry, check_inputs, default_registry
from ._session import Session
from ._spec import CFGStyle, ModelSpec
from ._vae import check_vae_output, install_vae_split
from ._wrapper import Wrapped, is_wrapped, wrap_denoiser

__all__ = ["DENOISER_ATTRIBUTES", "Parallelized", "parallelize"]

DENOISER_ATTRIBUTES = ("transformer", "transformer_2", "unet")
"""Pipeline attributes that hold denoisers (``transformer_2`` is Wan 2.2's low-noise expert)."""

PLUGIN_GUIDE = "'Writing a model plugin' in the xcfg documentation (docs/plugins.md in the xcfg repository)"


class Parallelized:
    """What :func:`xcfg.parallelize` returns: the installed wrappers, and the way to undo them.

    Use it as a context manager, or call :meth:`remove`, to restore the pipeline exactly.

    Attributes:
        group: the CFG group the pipeline runs on (size 1 when there is nothing to split across).
        wrapped: one :class:`xcfg.Wrapped` per denoiser (empty when ``group.size == 1``).
        specs: the spec found for each denoiser, keyed by the pipeline attribute name.

    Example:
        >>> import xcfg
        >>> pipe = xcfg.build_example("cogvideox").pipe   # no process group here: nothing is installed
        >>> with xcfg.parallelize(pipe) as handle:
        ...     handle.active
        False
    """

    def __init__(
        self, pipe: Any, group: CFGGroup, specs: dict[str, ModelSpec], wrapped: list[Wrapped], undo: Any = None
    ) -> None:
        self.pipe = pipe
        self.group = group
        self.specs = specs
        self.wrapped = wrapped
        self._undo = undo
        self._removed = False

    @property
    def active(self) -> bool:
        """Whether the pipeline's CFG batch is split across more than one rank."""
        return bool(self.wrapped) and not self._removed

    def remove(self) -> None:
        """Restore the pipeline: the original forwards, the VAE's decode and the class. Idempotent; no collective."""
        if self._removed:
            return
        self._removed = True
        for item in self.wrapped:
            item.remove()
        if self._undo is not None:
            self._undo()
        if getattr(self.pipe, "__dict__", {}).get("_xcfg_handle") is self:
            del self.pipe.__dict__["_xcfg_handle"]

    def __enter__(self) -> Parallelized:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        models = ", ".join(f"{k}={v.name}" for k, v in self.specs.items())
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
) -> Parallelized:
    """Run the pipeline's classifier-free guidance batch split across the ranks of a CFG group.

    Call it on every rank, after ``torch.distributed.init_process_group`` (or
    :func:`xcfg.init_distributed`) and after moving the pipeline to this rank's device. Everything
    that can be refused is refused here, on every rank, before any collective. With no process group
    or a world of one, nothing is installed and the pipeline behaves exactly as before.

    Args:
        pipe: a diffusers pipeline (its ``transformer``, ``transformer_2`` or ``unet`` are wrapped), or
            a denoiser module for a hand-written loop.
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
            Mochi, ``AutoencoderKL``). Only a tiled decode is split: enable tiling yourself with
            ``pipe.vae.enable_tiling()``, since it changes the decoded result; a decode without tiling or
            of a latent smaller than one tile runs whole on every rank, as before. ``False`` leaves the
            VAE alone.
        vae_output: where the split decode delivers its result: ``"all"`` ranks (every rank's pipeline
            output is the same), or ``"rank0"`` only, when only rank 0 saves the result; the other ranks
            skip the blending and their pipeline returns zeros of the same shape.
        registry: where to look models up (default: :func:`xcfg.default_registry`).

    Returns:
        A :class:`Parallelized` handle; ``handle.remove()`` undoes everything.

    Raises:
        UnsupportedModelError: no plugin knows a denoiser's class.
        NoCFGError: the model has no uncond/cond pair (guidance-distilled models without ``true_cfg``).
        SetupError: applied twice, a world size ``degree`` does not divide, a two-call model on a group
            that is not 2 ranks, a model on another rank's device, or a backend that cannot carry the
            model's tensors, or a VAE whose decode another handle split already.
        ValueError: ``vae_output`` is neither ``"all"`` nor ``"rank0"``.

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
    found = _denoisers(pipe)
    specs = {name: _spec_for(name, module, registry, true_cfg) for name, module in found.items()}
    _refusals(pipe, found, specs)
    if "_xcfg_handle" in getattr(pipe, "__dict__", {}) or is_hooked(pipe) or any(map(is_wrapped, found.values())):
        raise SetupError(
            "xcfg: this pipeline is already parallelized; call .remove() on the handle the first parallelize() "
            "returned (or use it as a context manager) before applying it again"
        )
    two_call = [name for name, spec in specs.items() if spec.style is CFGStyle.TWO_CALL]
    size = _planned_size(group, degree)
    if two_call and size not in (1, 2):
        raise SetupError(
            f"xcfg: the pipeline's {two_call[0]!r} makes two denoiser calls per step (cond, uncond), so its CFG group "
            f"needs exactly 2 ranks, not {size}: use degree=2 (the default) or a group of 2 ranks"
        )
    if size > 1:
        _check_devices(found, group.group if isinstance(group, CFGGroup) else group)
    cfg_group = _resolve_group(group, degree, timeout)
    if cfg_group.size == 1:
        return _mark(pipe, Parallelized(pipe, cfg_group, specs, []))
    session = Session(cfg_group, check_every=check_every)
    devices = session.handshake(_device_index(found), _fingerprint(specs))
    cuda = [d for d in devices if d >= 0]
    if len(set(cuda)) < len(cuda):
        raise SetupError(
            f"xcfg: several ranks of the CFG group {list(cfg_group.ranks)} put their pipeline on the same GPU "
            f"(cuda indices {devices}). Give each rank its own: torch.cuda.set_device(local_rank) and "
            "pipe.to(f'cuda:{local_rank}'), or let xcfg.init_distributed() pick the device."
        )
    split = split_vae and not isinstance(pipe, torch.nn.Module)
    vae_undo = install_vae_split(pipe, cfg_group, session, registry, output=vae_output) if split else None
    wrapped = [wrap_denoiser(module, specs[name], cfg_group, session=session) for name, module in found.items()]
    undo = None if isinstance(pipe, torch.nn.Module) else install_pipeline_hooks(pipe, session)
    return _mark(pipe, Parallelized(pipe, cfg_group, specs, wrapped, _undo_all(undo, vae_undo)))


def _undo_all(*undos: Any) -> Any:
    todo = [undo for undo in undos if undo is not None]
    if not todo:
        return None
    return lambda: [undo() for undo in todo]


def _mark(pipe: Any, handle: Parallelized) -> Parallelized:
    if hasattr(pipe, "__dict__"):
        pipe.__dict__["_xcfg_handle"] = handle
    return handle


def _denoisers(pipe: Any) -> dict[str, torch.nn.Module]:
    if isinstance(pipe, torch.nn.Module):
        return {"model": pipe}
    found = {name: getattr(pipe, name, None) for name in DENOISER_ATTRIBUTES}
    found = {name: module for name, module in found.items() if isinstance(module, torch.nn.Module)}
    if not found:
        raise UnsupportedModelError(
            f"xcfg: found no denoiser on {type(pipe).__name__}: it has none of the attributes "
            f"{', '.join(DENOISER_ATTRIBUTES)}. Pass the denoiser module itself: xcfg.parallelize(pipe.my_denoiser)."
        )
    return found


def _spec_for(name: str, module: torch.nn.Module, registry: Registry, true_cfg: bool) -> ModelSpec:
    cls = type(module)
    entry = registry.lookup(cls)
    if entry is None:
        raise UnsupportedModelError(
            f"xcfg: no plugin knows {cls.__module__}.{cls.__qualname__} (the pipeline's {name!r}). Register a spec "
            "that names the forward arguments carrying the CFG batch, for example:\n"
            "    @xcfg.hookimpl\n"
            "    def register_models(register):\n"
            f"        register(xcfg.ModelSpec(model='{cls.__module__}:{cls.__qualname__}', "
            "batch_inputs=['hidden_states', 'encoder_hidden_states', 'timestep']))\n"
            "    xcfg.register_plugin(sys.modules[__name__])\n"
            f"Guide: {PLUGIN_GUIDE}"
        )
    spec = entry.spec
    if spec.style is CFGStyle.NONE:
        raise NoCFGError(f"xcfg cannot parallelize {cls.__name__} (plugin {entry.plugin!r}): {spec.no_cfg_reason}")
    if spec.guidance_distilled is not None and not true_cfg and spec.guidance_distilled(module):
        raise NoCFGError(
            f"xcfg cannot parallelize {cls.__name__} (plugin {entry.plugin!r}): {spec.no_cfg_reason} If you call the "
            "pipeline with true CFG (a negative prompt and true_cfg_scale > 1), it makes a cond and an uncond call per "
            "step that xcfg can run on two ranks: pass xcfg.parallelize(pipe, true_cfg=True)."
        )
    check_inputs(spec, cls)
    return spec


def _refusals(pipe: Any, found: dict[str, torch.nn.Module], specs: dict[str, ModelSpec]) -> None:
    """Ask each spec's ``refuse`` whether this pipeline's calls can be split."""
    owner = None if isinstance(pipe, torch.nn.Module) else pipe
    for name, module in found.items():
        spec = specs[name]
        reason = spec.refuse(owner, module) if spec.refuse is not None else None
        if reason:
            raise UnsupportedPipelineError(
                f"xcfg cannot parallelize {type(pipe).__name__} (its {name!r} is {spec.name}): {reason}"
            )


def _resolve_group(group: Any, degree: int, timeout: datetime.timedelta) -> CFGGroup:
    if isinstance(group, CFGGroup):
        return group
    if group is not None:
        return CFGGroup.from_group(group, timeout=timeout)
    return CFGGroup.create(degree, timeout=timeout)


def _planned_size(group: Any, degree: int) -> int:
    """The CFG group size ``parallelize`` will use, checked without any collective."""
    if isinstance(group, CFGGroup):
        return group.size
    if group is not None:
        return dist.get_world_size(group)
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    check_world_size(dist.get_world_size(), degree)
    return min(degree, dist.get_world_size())


def _module_device(module: torch.nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _device_index(found: dict[str, torch.nn.Module]) -> int:
    devices = [_module_device(m) for m in found.values()]
    return next((d.index if d.index is not None else torch.cuda.current_device() for d in devices if d and d.type == "cuda"), -1)


def _check_devices(found: dict[str, torch.nn.Module], source: Any) -> None:
    """Refuse devices the backend of ``source`` (the group the CFG group is made from) cannot carry."""
    for name, module in found.items():
        device = _module_device(module)
        if device is None or device.type == "meta":
            continue
        backend = backend_for(source, device)
        if backend is None or (backend == "gloo" and device.type != "cpu"):
            raise SetupError(
                f"xcfg: the pipeline's {name!r} is on {device}, but the CFG group's backend "
                f"({dist.get_backend(source)}) cannot carry {device.type} tensors. Initialize the process group "
                f"with backend='nccl' for GPUs (xcfg.init_distributed() does), or keep the model on the CPU with gloo."
            )
        if backend == "nccl" and device.type != "cuda":
            raise SetupError(
                f"xcfg: the pipeline's {name!r} is on {device}, but the CFG group uses NCCL, which only carries CUDA "
                "tensors. Move the pipeline to this rank's GPU (pipe.to(f'cuda:{local_rank}')) or use backend='gloo' "
                "for CPU ranks."
            )
        local = os.environ.get("LOCAL_RANK")
        if device.type == "cuda" and local is not None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index != int(local) and torch.cuda.device_count() > int(local):
                raise SetupError(
                    f"xcfg: the pipeline's {name!r} is on cuda:{index}, but this process is local rank {local}, whose "
                    f"GPU is cuda:{local}. Call torch.cuda.set_device({local}) and pipe.to('cuda:{local}') (or use the "
                    "device xcfg.init_distributed() returns) before parallelize()."
                )


def _fingerprint(specs: dict[str, ModelSpec]) -> int:
    text = ",".join(f"{name}={spec.path}" for name, spec in sorted(specs.items()))
    return zlib.crc32(text.encode()) & 0x7FFFFFFF
