"""Everything :func:`xcfg.parallelize` refuses, in one place, checked on every rank before any collective.

Each check raises a :class:`xcfg.RefusedError` subclass whose message says what to do instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ._errors import NoCFGError, SetupError, UnsupportedModelError, UnsupportedPipelineError
from ._group import backend_for, backend_name, check_world_size, world_size
from ._registry import Registry
from ._spec import CFGStyle, ModelSpec

__all__ = [
    "PLUGIN_GUIDE",
    "check_devices",
    "check_not_parallelized",
    "check_style",
    "planned_size",
    "spec_for",
]

PLUGIN_GUIDE = "'Writing a model plugin' in the xcfg documentation (docs/plugins.md in the xcfg repository)"


def spec_for(name: str, module: torch.nn.Module, registry: Registry, *, true_cfg: bool, infer: bool) -> ModelSpec | None:
    """The registered spec for a denoiser, ``None`` when no plugin knows it and inference is on.

    Raises:
        UnsupportedModelError: no plugin knows the class and ``infer`` is off.
        NoCFGError: the spec says the model has no CFG (or this instance is guidance-distilled).
    """
    cls = type(module)
    entry = registry.lookup(cls)
    if entry is None:
        if infer:
            return None
        raise UnsupportedModelError(
            f"xcfg: no plugin knows {cls.__module__}.{cls.__qualname__} (the pipeline's {name!r}) and inference is "
            "off (parallelize(..., infer=False)). Turn inference on, or register a spec that names the forward "
            "arguments carrying the CFG batch, for example:\n"
            "    @xcfg.hookimpl\n"
            "    def register_models(register):\n"
            f"        register(xcfg.ModelSpec(model='{cls.__module__}:{cls.__qualname__}', "
            "batch_inputs=['hidden_states', 'encoder_hidden_states', 'timestep']))\n"
            "    xcfg.register_plugin(sys.modules[__name__])\n"
            f"Guide: {PLUGIN_GUIDE}"
        )
    spec = entry.spec
    assert isinstance(spec, ModelSpec)
    if spec.style is CFGStyle.NONE:
        raise NoCFGError(f"xcfg cannot parallelize {cls.__name__} (plugin {entry.plugin!r}): {spec.no_cfg_reason}")
    if spec.guidance_distilled is not None and not true_cfg and spec.guidance_distilled(module):
        raise NoCFGError(
            f"xcfg cannot parallelize {cls.__name__} (plugin {entry.plugin!r}): {spec.no_cfg_reason} If you call the "
            "pipeline with true CFG (a negative prompt and true_cfg_scale > 1), it makes a cond and an uncond call per "
            "step that xcfg can run on two ranks: pass xcfg.parallelize(pipe, true_cfg=True)."
        )
    return spec


def check_pipeline(pipe: Any, found: dict[str, torch.nn.Module], specs: dict[str, ModelSpec | None]) -> None:
    """Ask each spec's ``refuse`` whether this pipeline's calls can be split.

    Raises:
        UnsupportedPipelineError: with the plugin's reason.
    """
    owner = None if isinstance(pipe, torch.nn.Module) else pipe
    for name, module in found.items():
        spec = specs[name]
        reason = spec.refuse(owner, module) if spec is not None and spec.refuse is not None else None
        if reason:
            raise UnsupportedPipelineError(
                f"xcfg cannot parallelize {type(pipe).__name__} (its {name!r} is {spec.name}): {reason}"
            )


def check_style(spec: ModelSpec, size: int, what: str) -> None:
    """Refuse a spec that cannot be installed on a group of ``size`` ranks.

    Raises:
        SetupError: a ``none`` spec, or a two-call spec on a group that is not 2 ranks.
    """
    if spec.style is CFGStyle.NONE:
        raise SetupError(f"xcfg: {spec.name} has no CFG to split: {spec.no_cfg_reason}")
    if spec.style is CFGStyle.TWO_CALL and size not in (1, 2):
        raise SetupError(
            f"xcfg: the pipeline's {what} makes two denoiser calls per step (cond, uncond), so its CFG group needs "
            f"exactly 2 ranks, not {size}: use degree=2 (the default) or a group of 2 ranks"
        )


def check_not_parallelized(pipe: Any, found: dict[str, torch.nn.Module]) -> None:
    """Refuse a pipeline, or a module of it, that xcfg already wraps.

    Raises:
        SetupError: naming what is wrapped already.
    """
    from ._hook import is_wrapped

    handle = getattr(pipe, "__dict__", {}).get("_xcfg_handle")
    wrapped = [name for name, module in found.items() if is_wrapped(module)]
    if handle is not None:
        raise SetupError(
            "xcfg: this pipeline is already parallelized; call .remove() on the handle the first parallelize() "
            "returned (or use it as a context manager) before applying it again"
        )
    if wrapped:
        raise SetupError(
            f"xcfg: the pipeline's {wrapped[0]!r} is already parallelized through another pipeline that shares it "
            "(from_pipe shares the modules). Use that pipeline, or remove its handle before parallelizing this one."
        )


def check_degree(degree: int) -> None:
    """Refuse a CFG degree below 1.

    Raises:
        SetupError: with the values that work.
    """
    if not isinstance(degree, int) or degree < 1:
        raise SetupError(f"xcfg: degree must be a whole number of ranks, at least 1 (2 for CFG), not {degree!r}")


def planned_size(group: Any, degree: int) -> int:
    """The CFG group size ``parallelize`` will use, checked without any collective.

    Raises:
        SetupError: a world size ``degree`` does not divide.
    """
    from ._group import CFGGroup

    check_degree(degree)
    if isinstance(group, CFGGroup):
        return group.size
    if group is not None:
        return world_size(group)
    world = world_size()
    if world == 1:
        return 1
    check_world_size(world, degree)
    return min(degree, world)


def module_device(module: torch.nn.Module) -> torch.device | None:
    """The device of a module's first parameter (or buffer), ``None`` when it has neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def check_devices(found: dict[str, torch.nn.Module], source: Any) -> None:
    """Refuse devices the backend of ``source`` (the group the CFG group is made from) cannot carry.

    Raises:
        SetupError: a device the backend cannot carry, or a model on another local rank's GPU.
    """
    for name, module in found.items():
        device = module_device(module)
        if device is None or device.type == "meta":
            continue
        backend = backend_for(source, device)
        if backend is None or (backend == "gloo" and device.type != "cpu"):
            raise SetupError(
                f"xcfg: the pipeline's {name!r} is on {device}, but the CFG group's backend "
                f"({backend_name(source)}) cannot carry {device.type} tensors. Initialize the process group "
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


def device_key(index: int, host: str | None = None) -> int:
    """A rank's GPU as one number that tells hosts apart: ``-1`` for no GPU, else a hash of the host name
    (``socket.gethostname()`` by default) above the cuda index's 16 bits."""
    if index < 0:
        return -1
    import socket
    import zlib

    name = socket.gethostname() if host is None else host
    return ((zlib.crc32(name.encode()) & 0x7FFFFFFF) << 16) | index


def check_distinct_gpus(devices: list[int], ranks: tuple[int, ...]) -> None:
    """Refuse a CFG group whose ranks share a GPU (``devices``: each rank's :func:`device_key`, -1 for none):
    the same cuda index on the same host. The same index on two hosts (a CFG pair across two nodes) is fine.

    Raises:
        SetupError: with how to give each rank its own GPU.
    """
    cuda = [d for d in devices if d >= 0]
    if len(set(cuda)) < len(cuda):
        indices = [d & 0xFFFF if d >= 0 else -1 for d in devices]
        raise SetupError(
            f"xcfg: several ranks of the CFG group {list(ranks)} put their pipeline on the same GPU of one host "
            f"(cuda indices {indices}). Give each rank its own: torch.cuda.set_device(local_rank) and "
            "pipe.to(f'cuda:{local_rank}'), or let xcfg.init_distributed() pick the device."
        )
