"""The hooks a plugin can implement. Mark implementations with :data:`xcfg.hookimpl`."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from ._spec import Example, ModelSpec

__all__ = ["hookimpl", "hookspec", "register_examples", "register_models"]

hookspec = pluggy.HookspecMarker("xcfg")
hookimpl = pluggy.HookimplMarker("xcfg")
"""Marks a plugin function as the implementation of an xcfg hook.

Example:
    >>> import xcfg
    >>> @xcfg.hookimpl
    ... def register_models(register):
    ...     register(xcfg.ModelSpec(model="my_package.models:MyTransformer", batch_inputs=["hidden_states"]))
"""


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Declare the denoiser classes (and VAEs) this plugin supports.

    Call ``register(spec)`` once per :class:`xcfg.ModelSpec`, and once per :class:`xcfg.VAESpec` for a
    VAE whose tiled decode xcfg may split across the ranks. Every plugin's implementation is called;
    return values are ignored. When two plugins register the same class, the plugin registered last
    wins, so a plugin registered at run time overrides a built-in one.

    Args:
        register: validates the spec (raising :class:`xcfg.SpecError` that names the plugin and the
            field) and adds it to the registry.

    Example:
        >>> import xcfg
        >>> @xcfg.hookimpl
        ... def register_models(register):
        ...     register(xcfg.ModelSpec(
        ...         model="diffusers:PixArtTransformer2DModel",
        ...         batch_inputs=["hidden_states", "encoder_hidden_states", "timestep"],
        ...     ))
    """


@hookspec
def register_examples(register: Callable[[Example], None]) -> None:
    """Offer runnable example pipelines built from configs with random weights.

    Call ``register(example)`` once per :class:`xcfg.Example`. ``xcfg run --example NAME``, the
    benchmarks and :func:`xcfg.testing.check_example` build them. Every plugin's implementation is
    called; when two plugins offer the same name, the plugin registered last wins.

    Args:
        register: validates the example and adds it to the registry.

    Example:
        >>> import xcfg
        >>> @xcfg.hookimpl
        ... def register_examples(register):
        ...     register(xcfg.Example(name="my-model", summary="my model, tiny", build=lambda **kw: ...))
    """
