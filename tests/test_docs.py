"""The documentation: it builds without a warning, documents every public name, and its code runs.

- every public name (``xcfg.__all__``, ``xcfg.testing.__all__``, the hook specs) has a docstring with a
  ``>>>`` example and an entry in the API reference;
- the doctests of the xcfg modules pass (examples that need a process group are marked ``+SKIP``);
- ``sphinx-build -n -W --keep-going`` succeeds with no warning;
- the plugin guide's plugin (``docs/examples/``), installed through the entry point of the guide's
  ``pyproject.toml``, passes the guide's own tests on 2 gloo ranks.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")

import xcfg  # noqa: E402
import xcfg.testing  # noqa: E402
from xcfg import _hookspecs, _registry  # noqa: E402

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
BUILD_TIMEOUT = 300

# A version string's value is its documentation.
NO_EXAMPLE_NEEDED = {"xcfg.__version__"}


def _hook_names() -> list[str]:
    return sorted(n for n, obj in vars(_hookspecs).items() if callable(obj) and hasattr(obj, "xcfg_spec"))


def _public() -> dict[str, object]:
    """Every public name, qualified as the API reference documents it: ``xcfg.__all__``,
    ``xcfg.testing.__all__`` and the hook specs."""
    names: dict[str, object] = {f"xcfg.{name}": getattr(xcfg, name) for name in xcfg.__all__}
    names.update({f"xcfg.testing.{name}": getattr(xcfg.testing, name) for name in xcfg.testing.__all__})
    names.update({f"xcfg._hookspecs.{name}": getattr(_hookspecs, name) for name in _hook_names()})
    return names


def _attribute_doc(short: str) -> str | None:
    """The attribute docstring (a string literal after the assignment) of ``short`` in an xcfg module."""
    from sphinx.pycode import ModuleAnalyzer

    for module in _xcfg_modules():
        docs = ModuleAnalyzer.for_module(module).find_attr_docs()
        if ("", short) in docs:
            return "\n".join(docs[("", short)])
    return None


def _docstring(qualname: str, obj: object) -> str | None:
    if inspect.isclass(obj):
        return vars(obj).get("__doc__")  # its own, never a base class's
    if inspect.isfunction(obj) or inspect.ismodule(obj):
        return obj.__doc__
    return _attribute_doc(qualname.rpartition(".")[2])


def _xcfg_modules() -> list[str]:
    return ["xcfg"] + sorted(f"xcfg.{m.name}" for m in pkgutil.iter_modules(xcfg.__path__) if m.name != "__main__")


# -- docstrings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qualname", sorted(_public()))
def test_every_public_name_has_a_docstring_with_an_example(qualname):
    obj = _public()[qualname]
    if qualname in NO_EXAMPLE_NEEDED:
        return
    doc = _docstring(qualname, obj)
    assert doc and doc.strip(), f"{qualname} has no docstring of its own"
    assert ">>>" in doc, f"{qualname}'s docstring has no '>>>' example"


@pytest.mark.parametrize("module_name", _xcfg_modules())
def test_doctests_of_the_xcfg_modules(module_name):
    module = importlib.import_module(module_name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    report: list[str] = []
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name, globs={})
    # attribute docstrings (``x = ...`` followed by a string) are invisible to DocTestFinder
    from sphinx.pycode import ModuleAnalyzer

    parser = doctest.DocTestParser()
    for (_, attr), lines in ModuleAnalyzer.for_module(module_name).find_attr_docs().items():
        text = "\n".join(lines)
        if ">>>" in text:
            tests.append(parser.get_doctest(text, {}, f"{module_name}.{attr}", module.__file__, 0))
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)


def test_doctests_in_the_pages():
    """``>>>`` examples written in the Markdown pages run too."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for page in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(_python_blocks(page.read_text())):
            if block.lstrip().startswith(">>>"):
                runner.run(parser.get_doctest(block, {}, f"{page.name}[{i}]", str(page), 0), out=report.append)
    assert runner.summarize(verbose=False).failed == 0, "".join(report)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_code_in_the_pages_and_examples_compiles_and_uses_public_names():
    """Every Python block of the pages, and every example file, parses, and every ``xcfg.NAME`` exists."""
    sources = [(f"{p.name}[{i}]", b) for p in sorted(DOCS.glob("*.md")) for i, b in enumerate(_python_blocks(p.read_text()))]
    sources += [(p.name, p.read_text()) for p in sorted(EXAMPLES.glob("*.py"))]
    for label, code in sources:
        if code.lstrip().startswith(">>>"):
            continue
        tree = ast.parse(code, filename=label)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "xcfg":
                assert hasattr(xcfg, node.attr), f"{label} uses xcfg.{node.attr}, which does not exist"


def test_the_pages_name_the_real_switches_and_defaults():
    plugins = (DOCS / "plugins.md").read_text()
    for variable in (_registry._DISABLE_ENV, _registry._ALLOW_ENV):
        assert variable in plugins, f"docs/plugins.md does not mention {variable}"
    from xcfg import _group

    assert _group.DEFAULT_TIMEOUT.total_seconds() == 300, "docs/guarantees.md says the timeout is 5 minutes"
    assert "5 minutes by default" in (DOCS / "guarantees.md").read_text()


# -- the Sphinx build --------------------------------------------------------------------------------


class _Build:
    """``sphinx-build`` as CI runs it (nitpicky, warnings are errors) into a fresh folder, in the background."""

    def __init__(self, out: Path) -> None:
        self.html = out / "html"
        self.log = out / "sphinx.log"
        command = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-b", "html",
                   "-d", str(out / "doctrees"), str(DOCS), str(self.html)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def result(self) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"sphinx-build did not finish within {BUILD_TIMEOUT} s")
        return code, self.log.read_text()


@pytest.fixture(scope="module", autouse=True)
def built_docs(tmp_path_factory):
    """Start the build when the module starts, so that it runs while the other tests do."""
    build = _Build(tmp_path_factory.mktemp("docs"))
    yield build
    if build.process.poll() is None:
        build.process.kill()
        build.process.wait()


def test_sphinx_build_has_no_warnings(built_docs):
    code, output = built_docs.result()
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert code == 0 and not warnings, "\n".join(warnings) or output[-3000:]


def test_the_api_reference_documents_every_public_name(built_docs):
    _, output = built_docs.result()
    assert (built_docs.html / "objects.inv").exists(), output[-3000:]
    documented = _inventory(built_docs.html / "objects.inv")
    missing = sorted(name for name in _public() if name not in documented)
    assert not missing, f"not in the API reference (docs/api.rst): {missing}"


def _inventory(path: Path) -> set[str]:
    """The object names of a Sphinx ``objects.inv`` (version 2: four header lines, then zlib)."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    for _ in range(3):
        _, _, body = body.partition(b"\n")
    assert header.startswith(b"# Sphinx inventory version 2"), header
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines() if line}


def test_the_generated_pages_show_the_registry(built_docs):
    _, output = built_docs.result()
    page = (built_docs.html / "models.html").read_text()
    for entry in xcfg.default_registry().specs():
        assert entry.spec.name in page, f"{entry.spec.name} is missing from the supported-models page"


# -- the plugin guide --------------------------------------------------------------------------------


def _entry_points(pyproject: Path) -> dict[str, str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(pyproject.read_text())["project"]["entry-points"]["xcfg"]


def test_the_plugin_guide_plugin_passes_its_tests_on_two_gloo_ranks(tmp_path, monkeypatch):
    """Install the guide's plugin as its pyproject says (an entry point), then run the guide's own tests."""
    entry_points = _entry_points(EXAMPLES / "cogview3plus_pyproject.toml")
    info = tmp_path / "xcfg_cogview3plus-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xcfg-cogview3plus\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[xcfg]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    monkeypatch.delenv("XCFG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("XCFG_PLUGINS", raising=False)
    # "installed": importable, and its entry point visible here and in the ranks (they inherit sys.path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registry, "_default", None)  # a fresh default registry, which loads entry points anew
    guide = importlib.import_module("test_cogview3plus_plugin")
    tests = [fn for name, fn in sorted(vars(guide).items()) if name.startswith("test_") and callable(fn)]
    assert len(tests) == 2, tests
    for test in tests:
        test()
