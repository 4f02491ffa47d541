import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
