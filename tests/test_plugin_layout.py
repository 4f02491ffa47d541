"""Every built-in plugin, parametrized from the entry points (a new plugin cannot go untested): the same
parts in the same order, specs that fit their classes, examples that build. Their examples run on 2 ranks
in the census (tests/test_census.py)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re

import pytest

import xcfg

PLUGINS = sorted(
    (ep.name, ep.value) for ep in importlib.metadata.entry_points(group="xcfg") if ep.value.startswith("xcfg_plugins.")
)
SECTIONS = ["# -- specs", "# -- examples", "# -- vae", "# -- context parallel", "# -- hooks"]


@pytest.mark.parametrize("name, path", PLUGINS, ids=[name for name, _ in PLUGINS])
def test_plugin_module_has_the_parts_in_order_and_its_specs_fit(name, path, registry):
    module = importlib.import_module(path)
    source = inspect.getsource(module)
    assert module.__doc__ and len(module.__doc__.splitlines()) > 2, "a docstring that explains the CFG loop"
    order = [source.index(section) for section in SECTIONS if section in source]
    assert order == sorted(order) and "# -- specs" in source and "# -- hooks" in source, "sections out of order"
    assert re.search(r"^def register_models\(", source, re.M), "a register_models hook"
    assert name in registry.plugin_names()
    for spec in getattr(module, "SPECS", ()):
        cls = spec.resolve()
        params = inspect.signature(cls.forward).parameters
        assert {item.name for item in spec.batch_inputs} <= set(params), spec
        assert registry.lookup(cls).plugin == name, f"{cls.__name__} is claimed by another plugin"
    examples = getattr(module, "EXAMPLES", ())
    if examples:
        assert "tiny" in module.CONFIGS and callable(module.build)
        for example in examples:
            assert registry.example(example.name) is not None
