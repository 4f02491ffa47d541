import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIERS = {
    "unit": "no processes, no process group: the bulk, seconds (`pytest -m unit`)",
    "ranks": "real processes: gloo ranks, torchrun or a subprocess",
    "docs": "the Sphinx build and the pages' doctests",
    "bench": "the benchmark runner's CPU mode",
    "census": "every CFG pipeline class of the installed diffusers, on 2 gloo ranks",
}


def pytest_configure(config):
    for name, meaning in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(
            "pytest-timeout is not installed, so a hanging multi-process test would block instead of failing: "
            "pip install -e '.[test]'"
        )


def pytest_collection_modifyitems(config, items):
    """A test without a tier marker is a unit test."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_processes(request, monkeypatch):
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts processes: mark it @pytest.mark.ranks, not unit")

    import xcfg.testing

    monkeypatch.setattr(xcfg.testing, "run_ranks", refuse)


@pytest.fixture
def registry():
    """A fresh registry with the built-in plugins (through their entry points), discarded after the test."""
    import xcfg

    reg = xcfg.Registry(autoload=True)
    reg.load_entrypoints()
    return reg


@pytest.fixture
def empty_registry():
    import xcfg

    return xcfg.Registry(autoload=False)
