"""xcfg: classifier-free guidance parallelism for diffusers pipelines.

A CFG pipeline evaluates its denoiser on the batch ``[uncond, cond]`` at every step. ``xcfg.parallelize``
splits that batch across the ranks of a process group and all-gathers the predictions, so every rank
continues with the same state, in about half the time per step on two GPUs::

    import torch, xcfg
    from diffusers import CogVideoXPipeline

    device = xcfg.init_distributed()            # torchrun's environment -> NCCL on GPUs, gloo on CPUs
    pipe = CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-5b", torch_dtype=torch.bfloat16).to(device)
    xcfg.parallelize(pipe)
    video = pipe("a panda playing a guitar", guidance_scale=6.0).frames[0]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    DivergenceError,
    LaunchError,
    NoCFGError,
    RankError,
    RankFailedError,
    RankMismatchError,
    RankTimeoutError,
    RefusedError,
    SetupError,
    ShapeError,
    SpecError,
    UnsupportedModelError,
    UnsupportedPipelineError,
    WorkerDiedError,
    WorkerError,
    WorkerTimeoutError,
    XcfgError,
)
from ._log import is_main_process, log_all_ranks

# Everything that needs torch, pydantic or diffusers is imported on first use (PEP 562), so that
# ``import xcfg`` and ``xcfg --help`` stay fast; ``xcfg.parallelize`` and the rest behave as before.
_LAZY = {
    "CFGGroup": "_group", "init_distributed": "_group",
    "hookimpl": "_hookspecs",
    "Parallelized": "_parallelize", "parallelize": "_parallelize",
    "Registered": "_registry", "Registry": "_registry", "default_registry": "_registry",
    "BatchInput": "_spec", "CFGStyle": "_spec", "Example": "_spec", "ExampleRun": "_spec", "ModelSpec": "_spec",
    "Launched": "_launch", "launch": "_launch",
    "ContextParallelSpec": "_layout", "Layout": "_layout", "layout_from_mesh": "_layout", "plan_layout": "_layout",
    "sequence_share": "_layout",
    "VAESpec": "_spec",
    "PMap": "_vae", "install_vae_split": "_vae",
    "Wrapped": "_hook", "wrap_denoiser": "_hook",
}

if TYPE_CHECKING:
    from ._group import CFGGroup, init_distributed
    from ._hook import Wrapped, wrap_denoiser
    from ._hookspecs import hookimpl
    from ._launch import Launched, launch
    from ._layout import ContextParallelSpec, Layout, layout_from_mesh, plan_layout, sequence_share
    from ._parallelize import Parallelized, parallelize
    from ._registry import Registered, Registry, default_registry
    from ._spec import BatchInput, CFGStyle, Example, ExampleRun, ModelSpec, VAESpec
    from ._vae import PMap, install_vae_split


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name.startswith("_") and not name.startswith("__") or name == "testing":
        try:  # a submodule, as ``xcfg._group`` was reachable after ``import xcfg`` before imports were lazy
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "BatchInput",
    "CFGGroup",
    "CFGStyle",
    "ContextParallelSpec",
    "DivergenceError",
    "Example",
    "ExampleRun",
    "LaunchError",
    "Launched",
    "Layout",
    "ModelSpec",
    "NoCFGError",
    "PMap",
    "Parallelized",
    "RankError",
    "RankFailedError",
    "RankMismatchError",
    "RankTimeoutError",
    "RefusedError",
    "Registered",
    "Registry",
    "SetupError",
    "ShapeError",
    "SpecError",
    "UnsupportedModelError",
    "UnsupportedPipelineError",
    "VAESpec",
    "WorkerDiedError",
    "WorkerError",
    "WorkerTimeoutError",
    "Wrapped",
    "XcfgError",
    "__version__",
    "build_example",
    "default_registry",
    "hookimpl",
    "init_distributed",
    "install_vae_split",
    "is_main_process",
    "log_all_ranks",
    "launch",
    "layout_from_mesh",
    "parallelize",
    "plan_layout",
    "register_plugin",
    "sequence_share",
    "unregister_plugin",
    "wrap_denoiser",
]


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin with the default registry at run time; its specs are validated now.

    Args:
        plugin: a module, class or object with ``@xcfg.hookimpl`` functions.
        name: the plugin's name (default: derived by pluggy).

    Returns:
        The name it was registered under; pass it to :func:`unregister_plugin`.

    Example:
        >>> import xcfg
        >>> class MyModels:
        ...     @xcfg.hookimpl
        ...     def register_models(self, register):
        ...         register(xcfg.ModelSpec(model="diffusers:LTXVideoTransformer3DModel",
        ...                                 batch_inputs=["hidden_states", "encoder_hidden_states",
        ...                                               "timestep", "encoder_attention_mask"]))
        >>> name = xcfg.register_plugin(MyModels(), name="my-models")
        >>> xcfg.unregister_plugin(name)
    """
    from ._registry import default_registry

    return default_registry().register(plugin, name=name)


def unregister_plugin(plugin: Any) -> None:
    """Remove a plugin from the default registry, given the object or the name it was registered under.

    Example:
        >>> import xcfg
        >>> xcfg.unregister_plugin("no-such-plugin")   # unknown names are ignored
    """
    from ._registry import default_registry

    registry = default_registry()
    if isinstance(plugin, str):
        registry.unregister(name=plugin)
    else:
        registry.unregister(plugin)


def build_example(name: str | None = None, **kwargs: Any) -> ExampleRun:
    """Build a registered example pipeline (random weights, no download) and its call arguments.

    Args:
        name: the example's name (``xcfg run --list`` shows them); ``None`` for the default.
        **kwargs: passed to the example's ``build``: ``size`` (``"tiny"`` or ``"full"``), ``device``,
            ``dtype``.

    Example:
        >>> import xcfg
        >>> run = xcfg.build_example("cogvideox", size="tiny")
        >>> sorted(run.kwargs)[:3]
        ['guidance_scale', 'height', 'max_sequence_length']
    """
    from ._registry import default_registry

    return default_registry().example(name).build(**kwargs)
