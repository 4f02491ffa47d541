"""Sphinx configuration for the xcfg documentation.

Build (warnings are errors; what CI and tests/test_docs.py run)::

    sphinx-build -n -W --keep-going -b html docs docs/_build/html

Generated at build time, never by hand (``docs/_generated/`` is git-ignored):

- ``_generated/models.md``: the supported-models table, from ``xcfg.default_registry().specs()``;
- ``_generated/census.md``: the census table (how xcfg runs every CFG denoiser class of diffusers), from
  ``docs/_data/census.json`` (``tests/census/run.py --write`` records it);
- ``_generated/cli-run.txt``: ``xcfg run --help``;
- ``_generated/unsupported.txt``: the refusal of the plugin guide's model, which xcfg must not know;
- ``_generated/benchmarks.md``: the committed GPU results in ``benchmarks/results/`` or, while there are
  none, how to produce them.

Pydantic specs (:class:`xcfg.ModelSpec`, ...) are rendered by plain autodoc: the hooks at the end of this
file give each model a keyword signature built from its fields, add every field's type and default to
the entry napoleon makes from the ``Attributes:`` section, and fail the build when a field is missing
from that section.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
RESULTS = ROOT / "benchmarks" / "results"

sys.path.insert(0, str(ROOT))  # the checkout's xcfg, also when it is not installed

import xcfg  # noqa: E402

# -- project -----------------------------------------------------------------------------------------

project = "xcfg"
author = "the xcfg authors"
copyright = "the xcfg authors"  # noqa: A001
release = xcfg.__version__
version = release

# -- general -----------------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "examples", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
pygments_style = "friendly"
pygments_dark_style = "monokai"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc and napoleon ----------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- nitpicky: every reference must resolve ----------------------------------------------------------

# The build runs offline (CI has no network), so there is no intersphinx: references to other projects'
# objects cannot resolve and are ignored here, by project. References into xcfg itself must resolve.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:class", r"xcfg\._(hook|styles|infer|protocol|binding|gather|tree)\..*"),
    (r"py:.*", r"(torch|diffusers|pluggy|pydantic|pydantic_core|transformers|PIL)(\..*)?"),
    (r"py:.*", r"(datetime|collections\.abc|enum|dataclasses|inspect|multiprocessing)\..*"),
    (r"py:.*", r"(Callable|Iterator|Sequence|Module|Tensor|Generator|ProcessGroup|timedelta)"),
]
# Private xcfg types that appear in public signatures; the docstrings that use them say what they are.
nitpick_ignore = [
    ("py:class", "xcfg._session.Session"),
    ("py:class", "Session"),  # the same, where autodoc cannot resolve a signature's annotations
]

# -- HTML --------------------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"xcfg {release}"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": True}
html_show_sourcelink = False


# -- generated pages ---------------------------------------------------------------------------------


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps Sphinx's incremental builds quiet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def models_table() -> str:
    """The supported-models table, from the default registry (built-in and installed plugins)."""
    registry = xcfg.default_registry()
    rows = [
        "| model class | plugin | CFG style | batch arguments, or why it is refused |",
        "|---|---|---|---|",
    ]
    for entry in sorted(registry.specs(), key=lambda e: (e.spec.name, e.plugin)):
        spec = entry.spec
        style = getattr(spec.style, "value", str(spec.style))
        if spec.no_cfg_reason and style == "none":
            detail = f"refused: {spec.no_cfg_reason}"
        elif spec.batch_inputs:
            detail = ", ".join(f"`{item.label}`" for item in spec.batch_inputs)
        else:
            detail = "(none: each rank computes one of the two calls of a step)"
        if spec.no_cfg_reason and style != "none":
            detail += f"; a guidance-distilled checkpoint is refused: {spec.no_cfg_reason}"
        rows.append(f"| `{spec.name}` | `{entry.plugin}` | {style} | {_cell(detail)} |")
    vae_kind = getattr(xcfg, "VAESpec", None)
    vaes = sorted(registry.specs(vae_kind), key=lambda e: (e.spec.name, e.plugin)) if vae_kind else []
    examples = sorted(registry.examples(), key=lambda e: e.name)
    lines = [
        "<!-- generated by docs/conf.py from xcfg.default_registry(); do not edit -->",
        "",
        *rows,
        "",
    ]
    if vaes:
        default = inspect.signature(xcfg.parallelize).parameters.get("split_vae")
        state = "" if default is None else f", {'on' if default.default else 'off'} by default"
        lines += [
            f"VAEs whose tiled decode is split across the ranks (`split_vae`{state}; see {{class}}`xcfg.VAESpec`):",
            "",
            "| VAE class | plugin |",
            "|---|---|",
            *(f"| `{e.spec.name}` | `{e.plugin}` |" for e in vaes),
            "",
        ]
    if examples:
        lines += [
            "Examples you can run with `xcfg run --example NAME` (random weights, no download):",
            "",
            "| example | what it builds | sizes |",
            "|---|---|---|",
            *(f"| `{e.name}` | {_cell(e.summary)} | {', '.join(e.sizes)} |" for e in examples),
            "",
        ]
    return "\n".join(lines)


def _runner_usage() -> str:
    """The docstring of ``benchmarks/run.py``, when the runner exists."""
    runner = ROOT / "benchmarks" / "run.py"
    if not runner.exists():
        return ""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(runner.read_text())) or ""
    except SyntaxError:
        return ""
    return doc.strip()


def benchmarks_page() -> str:
    """The benchmark results committed under ``benchmarks/results/``, or how to produce them."""
    lines = ["<!-- generated by docs/conf.py from benchmarks/results/; do not edit -->", ""]
    table, chart = RESULTS / "results.md", RESULTS / "speedup.png"
    if table.exists() or chart.exists():
        if chart.exists():
            lines += [
                "```{image} " + os.path.relpath(chart, DOCS),
                ":alt: speedup of 2 GPUs over 1, per model",
                ":width: 100%",
                "```",
                "",
            ]
        if table.exists():
            lines += [
                "```{include} " + os.path.relpath(table, DOCS),  # relative to the including page
                ":heading-offset: 1",
                "```",
                "",
            ]
    else:
        lines += [
            "No GPU results are committed yet. They are produced by the benchmark runner,",
            "`benchmarks/run.py`, on a machine with two GPUs; it writes `benchmarks/results/results.md`",
            "and `benchmarks/results/speedup.png`, which this page then shows.",
            "",
        ]
        usage = _runner_usage()
        if usage:
            lines += ["From the runner's own description:", "", "```text", usage, "```", ""]
    return "\n".join(lines)


def cli_help() -> str:
    """``xcfg run --help``, as the installed command prints it."""
    import contextlib
    import io

    from xcfg._cli import main

    buffer = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            main(["run", "--help"])
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return buffer.getvalue()


TUTORIAL_MODEL = "CogView3PlusTransformer2DModel"


def unsupported_message() -> str:
    """What ``xcfg.parallelize`` says about the plugin guide's model before its plugin is registered."""
    import diffusers

    sys.path.insert(0, str(DOCS / "examples"))
    try:
        import cogview3plus_plugin
    finally:
        sys.path.remove(str(DOCS / "examples"))
    model = getattr(diffusers, TUTORIAL_MODEL)(**cogview3plus_plugin.CONFIGS["tiny"]["transformer"])

    class Pipe:
        transformer = model

    try:
        xcfg.parallelize(Pipe(), registry=xcfg.Registry(), infer=False)
    except xcfg.UnsupportedModelError as err:
        return f"{type(err).__module__.split('.')[0]}.{type(err).__name__}: {err}\n"
    from sphinx.util import logging

    logging.getLogger(__name__).warning(
        "xcfg now supports %s: the plugin guide (docs/plugins.md) must walk through a model xcfg does not know",
        TUTORIAL_MODEL, type="xcfg", subtype="tutorial",
    )
    return ""


def census_table() -> str:
    """The census table, generated by ``tests/census/tables.py`` from ``docs/_data/census.json``."""
    sys.path.insert(0, str(DOCS.parent / "tests"))
    try:
        from census.tables import markdown
    finally:
        sys.path.remove(str(DOCS.parent / "tests"))
    return markdown()


def generate() -> None:
    """Write the generated pages (before Sphinx reads any source)."""
    _write_if_changed(GENERATED / "models.md", models_table())
    _write_if_changed(GENERATED / "census.md", census_table())
    _write_if_changed(GENERATED / "cli-run.txt", cli_help())
    _write_if_changed(GENERATED / "unsupported.txt", unsupported_message())
    _write_if_changed(GENERATED / "benchmarks.md", benchmarks_page())


# -- pydantic models with plain autodoc --------------------------------------------------------------


def _pydantic_model(obj: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover
        return False
    return inspect.isclass(obj) and issubclass(obj, BaseModel) and obj is not BaseModel


def _default_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def _annotation_text(annotation: Any) -> str:
    from sphinx.util.typing import stringify_annotation

    return stringify_annotation(annotation, "smart")


def pydantic_signature(app, what, name, obj, options, signature, return_annotation):  # noqa: ANN001
    """A pydantic model is called with its fields as keywords: show them instead of ``(**data)``.
    A protocol is never instantiated: show no signature."""
    if what == "class" and getattr(obj, "_is_protocol", False):
        return "", None
    if what == "class" and _dataclass_with_private_fields(obj):
        return _public_dataclass_signature(obj), None
    if what != "class" or not _pydantic_model(obj):
        return None
    parts = []
    for field_name, field in obj.model_fields.items():
        if field.is_required():
            parts.append(field_name)
        else:
            default = field.default if field.default_factory is None else field.default_factory()
            parts.append(f"{field_name}={_default_text(default)}")
    return "(*, " + ", ".join(parts) + ")", None


class _Factory:
    def __repr__(self) -> str:
        return "..."


def _dataclass_with_private_fields(obj: Any) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(obj) and any(f.name.startswith("_") for f in dataclasses.fields(obj))


def _public_dataclass_signature(obj: Any) -> str:
    """A dataclass's signature without its private fields (and ``...`` for a default factory)."""
    from sphinx.util.inspect import signature, stringify_signature

    sig = signature(obj.__init__, bound_method=True)
    params = []
    for param in sig.parameters.values():
        if param.name.startswith("_"):
            continue
        if repr(param.default) == "<factory>":
            param = param.replace(default=_Factory())
        params.append(param)
    return stringify_signature(sig.replace(parameters=params), show_return_annotation=False)


_PYDANTIC_INTERNALS = {"model_config", "model_fields", "model_computed_fields", "model_post_init"}


def skip_pydantic_internals(app, what, name, obj, skip, options):  # noqa: ANN001
    """pydantic's class-level configuration is not part of a spec's documentation."""
    return True if name in _PYDANTIC_INTERNALS else None


_ATTRIBUTE = re.compile(r"^(?P<indent>\s*)\.\. attribute:: (?P<name>\w+)\s*$")


def pydantic_fields(app, what, name, obj, options, lines: list[str]) -> None:  # noqa: ANN001
    """Give napoleon's entry for each field (from ``Attributes:``) the field's type and default.

    The type and default go in the entry's signature (``:type:`` and ``:value:`` options); napoleon's own
    ``:type:`` line in the body, copied from the annotation, is dropped. A field that the docstring does
    not describe is a warning, so ``-W`` fails the build.
    """
    if what != "class" or not _pydantic_model(obj):
        return
    from sphinx.util import logging

    fields = obj.model_fields
    out: list[str] = []
    seen: set[str] = set()
    current: str | None = None
    for line in lines:
        match = _ATTRIBUTE.match(line)
        if match is None and line.lstrip().startswith(".. "):
            current = None  # another directive: no longer inside a field's entry
        elif match is not None:
            current = match["name"] if match["name"] in fields else None
            out.append(line)
            if current is not None:
                seen.add(current)
                field, indent = fields[current], match["indent"] + "   "
                out.append(f"{indent}:type: {_annotation_text(field.annotation)}")
                if not field.is_required():
                    default = field.default if field.default_factory is None else field.default_factory()
                    out.append(f"{indent}:value: {_default_text(default)}")
            continue
        if current is not None and line.lstrip().startswith(":type:"):
            continue
        out.append(line)
    missing = [f for f in fields if f not in seen]
    if missing:
        logging.getLogger(__name__).warning(
            "pydantic model %s: field(s) %s not described in the docstring's Attributes: section",
            name, ", ".join(missing), type="xcfg", subtype="pydantic",
        )
    lines[:] = out


# -- re-exported data -------------------------------------------------------------------------------


def reexported_data_doc(app, what, name, obj, options, lines: list[str]) -> None:  # noqa: ANN001
    """``xcfg.hookimpl`` is documented where it is defined (an attribute docstring in a private module);
    autodoc looks in ``xcfg/__init__.py`` and would show the docstring of the object's type instead."""
    if what != "data" or not name.startswith("xcfg.") or name.count(".") != 1:
        return
    from sphinx.pycode import ModuleAnalyzer

    short = name.split(".")[1]
    for module_name in sorted(_private_modules()):
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except Exception:  # noqa: BLE001 - a module without source
            continue
        if ("", short) in docs:
            lines[:] = list(docs[("", short)])
            return


def _private_modules() -> list[str]:
    import pkgutil

    return [f"xcfg.{m.name}" for m in pkgutil.iter_modules(xcfg.__path__) if m.name.startswith("_") and not m.name.startswith("__")]


# -- references to re-exported names ----------------------------------------------------------------


def public_reference(app, env, node, contnode):  # noqa: ANN001
    """Resolve ``xcfg._module.Name`` (how annotations spell a re-exported class) as ``xcfg.Name``."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    parts = target.split(".")
    if len(parts) < 3 or parts[0] != "xcfg" or not parts[1].startswith("_"):
        return None
    public = ".".join(["xcfg", *parts[2:]])
    try:
        obj: Any = importlib.import_module("xcfg")
        for part in parts[2:]:
            obj = getattr(obj, part)
    except AttributeError:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"], public, node, contnode)


# -- completeness ------------------------------------------------------------------------------------


def check_public_names(app, env) -> None:  # noqa: ANN001
    """Warn (so ``-W`` fails the build) when a public name has no entry in the API reference."""
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    import xcfg.testing

    wanted = [f"xcfg.{name}" for name in xcfg.__all__]
    wanted += [f"xcfg.testing.{name}" for name in xcfg.testing.__all__]
    wanted += [f"xcfg._hookspecs.{name}" for name in _hook_names()]
    for name in wanted:
        if name not in documented:
            logging.getLogger(__name__).warning(
                "public name %s is not documented: add it to docs/api.rst", name, type="xcfg", subtype="api"
            )


def _hook_names() -> list[str]:
    from xcfg import _hookspecs

    return sorted(
        name for name, obj in vars(_hookspecs).items()
        if callable(obj) and hasattr(obj, "xcfg_spec")
    )


def setup(app: Any) -> dict[str, Any]:
    generate()
    app.connect("autodoc-process-signature", pydantic_signature)
    app.connect("autodoc-skip-member", skip_pydantic_internals)
    app.connect("autodoc-process-docstring", reexported_data_doc, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", pydantic_fields, priority=600)  # after napoleon (500)
    app.connect("missing-reference", public_reference)
    app.connect("env-check-consistency", check_public_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
