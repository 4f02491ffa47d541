"""The plugin manager: loads plugins lazily and once, collects their specs, looks classes up."""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from . import _hookspecs
from ._errors import SpecError
from ._binding import check_inputs
from ._spec import Example, ModelSpec, VAESpec

__all__ = ["ENTRY_POINT_GROUP", "Registered", "Registry", "default_registry"]

ENTRY_POINT_GROUP = "xcfg"
_DISABLE_ENV = "XCFG_DISABLE_PLUGIN_AUTOLOAD"
_ALLOW_ENV = "XCFG_PLUGINS"


@dataclass(frozen=True)
class _Collected:
    specs: tuple[ModelSpec | VAESpec, ...]
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Registered:
    """A spec together with the name of the plugin that registered it.

    Attributes:
        plugin: the plugin's name (its entry-point name, or the name given to ``register_plugin``).
        spec: the :class:`xcfg.ModelSpec` or :class:`xcfg.VAESpec` it registered.

    Example:
        >>> import xcfg
        >>> entry = xcfg.default_registry().specs()[0]
        >>> isinstance(entry, xcfg.Registered) and isinstance(entry.spec, xcfg.ModelSpec)
        True
    """

    plugin: str
    spec: ModelSpec | VAESpec


class Registry:
    """A set of xcfg plugins and the model specs they register.

    Entry-point plugins (group ``xcfg``, which includes the built-in ones) load on first use, once.
    Two environment variables control that:

    - ``XCFG_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry point at all;
    - ``XCFG_PLUGINS=cogvideox,my_plugin`` loads only the entry points named.

    Plugins registered with :meth:`register` are collected at once, so a malformed spec fails there.
    A plugin registered later takes precedence over earlier ones for the same class.

    Args:
        autoload: load entry points on first use; ``None`` reads the environment.

    Example:
        >>> import xcfg
        >>> reg = xcfg.Registry(autoload=False)
        >>> class MyPlugin:
        ...     @xcfg.hookimpl
        ...     def register_models(self, register):
        ...         register(xcfg.ModelSpec(model="diffusers:SanaTransformer2DModel",
        ...                                 batch_inputs=["hidden_states", "encoder_hidden_states", "timestep"]))
        >>> reg.register(MyPlugin(), name="sana")
        'sana'
        >>> [r.spec.name for r in reg.specs()]
        ['SanaTransformer2DModel']
    """

    def __init__(self, *, autoload: bool | None = None) -> None:
        self._pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self._pm.add_hookspecs(_hookspecs)
        if autoload is None:
            autoload = os.environ.get(_DISABLE_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}
        self._autoload = autoload
        self._loaded = not autoload
        self._collected: dict[str, _Collected] = {}
        self._lock = threading.RLock()

    # -- plugins -------------------------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module and collect its specs now.

        Args:
            plugin: a module, class or instance with ``@xcfg.hookimpl`` functions.
            name: the plugin's name (default: pluggy's, the module name for a module).

        Returns:
            The name the plugin was registered under.

        Raises:
            SpecError: a spec is malformed or a hook is misspelt; the plugin is not registered.
            ValueError: a plugin of that name is already registered.
        """
        self._ensure_loaded()  # entry points first, so a plugin registered now takes precedence over them
        with self._lock:
            name = self._pm.register(plugin, name=name)
            if name is None:
                raise ValueError(f"plugin {plugin!r} is already registered")
            try:
                self._pm.check_pending()
                self._collected[name] = self._collect(name)
            except BaseException as err:
                self._pm.unregister(name=name)
                if isinstance(err, pluggy.PluginValidationError):
                    raise SpecError(f"plugin {name!r}: {err}") from err
                raise
            return name

    def unregister(self, plugin: Any = None, *, name: str | None = None) -> None:
        """Remove a plugin, given the object or its name."""
        with self._lock:
            name = name or self._pm.get_name(plugin)
            if name is not None and self._pm.get_plugin(name) is not None:
                self._pm.unregister(name=name)
            self._collected.pop(name, None)

    def plugin_names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        self._ensure_loaded()
        return [name for name, _ in self._pm.list_name_plugin()]

    def load_entrypoints(self) -> None:
        """Load the entry-point plugins now (normally done on first use). Idempotent."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            allowed = os.environ.get(_ALLOW_ENV)
            allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if allow is not None and ep.name not in allow:
                    continue
                if self._pm.get_plugin(ep.name) is not None or self._pm.is_blocked(ep.name):
                    continue
                try:
                    plugin = ep.load()
                except Exception as err:
                    raise SpecError(f"xcfg plugin entry point {ep.name!r} ({ep.value}) failed to load: {err}") from err
                self.register(plugin, name=ep.name)

    # -- specs ---------------------------------------------------------------------------------------

    def specs(self, kind: type = ModelSpec) -> list[Registered]:
        """Every registered spec of ``kind`` (:class:`xcfg.ModelSpec` or :class:`xcfg.VAESpec`), the most
        recently registered plugin first."""
        self._ensure_loaded()
        with self._lock:
            return [
                Registered(name, spec)
                for name in self._newest_first()
                for spec in self._collected[name].specs
                if isinstance(spec, kind)
            ]

    def examples(self) -> list[Example]:
        """Every registered example, the most recently registered plugin first; a name appears once."""
        self._ensure_loaded()
        with self._lock:
            seen: dict[str, Example] = {}
            for name in self._newest_first():
                for example in self._collected[name].examples:
                    seen.setdefault(example.name, example)
            return list(seen.values())

    def example(self, name: str | None = None) -> Example:
        """The example called ``name``, or the default one.

        Raises:
            KeyError: no such example; the message lists the registered ones.
        """
        examples = self.examples()
        for example in examples:
            if (name is None and example.default) or example.name == name:
                return example
        known = ", ".join(sorted(e.name for e in examples)) or "none"
        raise KeyError(f"no xcfg example {name or '(default)'!r}; registered: {known}")

    def _newest_first(self) -> list[str]:
        return [n for n, _ in reversed(self._pm.list_name_plugin()) if n in self._collected]

    def lookup(self, cls: type, kind: type = ModelSpec) -> Registered | None:
        """Find the spec for a class or its nearest base class that has one.

        Args:
            cls: the model class (``type(pipe.transformer)``, or ``type(pipe.vae)`` with ``kind=VAESpec``).
            kind: the spec type to look for: :class:`xcfg.ModelSpec` or :class:`xcfg.VAESpec`.

        Returns:
            The spec and its plugin, or ``None`` when no plugin knows the class.

        Example:
            >>> import xcfg
            >>> from diffusers import CogVideoXTransformer3DModel
            >>> class MyCogVideoX(CogVideoXTransformer3DModel):
            ...     pass
            >>> xcfg.default_registry().lookup(MyCogVideoX).spec.name
            'CogVideoXTransformer3DModel'
        """
        entries = self.specs(kind)
        for base in cls.__mro__:
            for entry in _candidates(entries, base):
                if entry.spec.resolve() is base:
                    return entry
        return None

    # -- internals -----------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load_entrypoints()

    def _collect(self, name: str) -> _Collected:
        specs: list[ModelSpec] = []
        examples: list[Example] = []

        def adder(kinds: tuple[type, ...], into: list[Any]) -> Callable[[Any], None]:
            def register(item: Any) -> None:
                if isinstance(item, dict):
                    item = kinds[0](**item)
                if not isinstance(item, kinds):
                    raise SpecError(f"registered {item!r}; pass an {' or '.join(f'xcfg.{k.__name__}' for k in kinds)}")
                if isinstance(item, ModelSpec) and not isinstance(item.model, str):
                    check_inputs(item, item.model)
                into.append(item)

            return register

        plugin = self._pm.get_plugin(name)
        hooks = {
            "register_models": adder((ModelSpec, VAESpec), specs),
            "register_examples": adder((Example,), examples),
        }
        for hook_name, register in hooks.items():
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except SpecError as err:
                    raise SpecError(f"plugin {name!r}: {err}") from None
        return _Collected(tuple(specs), tuple(examples))


def _candidates(entries: list[Registered], base: type) -> Iterator[Registered]:
    """Entries that may name ``base``: those with a class, and lazy paths ending in its name."""
    for entry in entries:
        model = entry.spec.model
        if isinstance(model, str):
            if model.rpartition(":")[2].rpartition(".")[2] == base.__name__:
                yield entry
        elif model is base:
            yield entry


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The registry :func:`xcfg.parallelize` uses unless given another.

    Example:
        >>> import xcfg
        >>> "cogvideox" in xcfg.default_registry().plugin_names()
        True
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default
