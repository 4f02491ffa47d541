"""The supported-models table, generated from the census result (``docs/_data/census.json``): one row per
CFG denoiser class of the installed diffusers, saying how xcfg runs it. The docs build and the README use it."""

from __future__ import annotations

import json
import pathlib
from typing import Any

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "_data" / "census.json"
CLASSES = RESULTS.with_name("cfg-denoisers.json")  # every CFG denoiser class of diffusers, from discover.py
START, END = "<!-- census-table:start -->", "<!-- census-table:end -->"


def rows(results: dict[str, dict[str, Any]], unbuilt: dict[str, str], classes: list[str] | None = None) -> list[tuple[str, str, str]]:
    """``(class, pipelines, how)`` per denoiser class, sorted by class name."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for entry in results.values():
        for cls in entry["denoisers"]:
            by_class.setdefault(cls, []).append(entry)
    table = []
    for cls in sorted(set(by_class) | set(unbuilt) | set(classes or ())):
        entries = by_class.get(cls, [])
        pipelines = ", ".join(sorted({e["pipeline"] for e in entries})) or "—"
        passed = [e for e in entries if e["passed"]]
        split = [e for e in passed if e.get("expect", "split") == "split" and e["status"] in ("plugin", "inferred")]
        if any(e["status"] == "plugin" for e in split):
            how = "plugin"
        elif split:
            how = "inferred"
        elif any(e.get("expect") == "whole" for e in passed):
            how = "runs whole: " + (next(e for e in passed if e.get("expect") == "whole")["note"] or "")[:200]
        elif any(e["status"] == "refused" for e in passed):
            reason = next(e["reason"] for e in passed if e["status"] == "refused") or ""
            how = "refused: " + reason.split(": ", 1)[-1][:160]
        elif cls in unbuilt:
            how = f"not in the census: {unbuilt[cls]}"
        else:
            how = "fails: " + (entries[0]["why"] or "") if entries else "not in the census"
        table.append((cls, pipelines, how.replace("|", "/")))
    return table


def markdown(results: dict[str, dict[str, Any]] | None = None, unbuilt: dict[str, str] | None = None) -> str:
    """The table in Markdown, with a one-line count above it."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from census.unbuilt import UNBUILT

    results = json.loads(RESULTS.read_text()) if results is None else results
    classes = json.loads(CLASSES.read_text())["classes"] if CLASSES.exists() else None
    table = rows(results, UNBUILT if unbuilt is None else unbuilt, classes)
    counts = {how: sum(1 for _, _, h in table if h.split(":")[0] == how) for how in ("plugin", "inferred", "refused", "runs whole")}
    lines = [
        f"{counts['plugin'] + counts['inferred']} denoiser classes split on 2 ranks ({counts['plugin']} by a plugin, "
        f"{counts['inferred']} inferred), {counts['runs whole']} run whole (equal, not faster), {counts['refused']} refused "
        f"with the reason, of the {len(table)} denoiser "
        "classes that some pipeline of diffusers runs with CFG.",
        "",
        "| model class | pipelines run in the census | how xcfg runs it |",
        "|---|---|---|",
    ]
    lines += [f"| `{cls}` | {pipelines} | {how} |" for cls, pipelines, how in table]
    return "\n".join(lines) + "\n"


def readme_section(text: str) -> str:
    """The census table's part of the README (between the markers)."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def rewrite_readme(path: pathlib.Path) -> None:
    text = path.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{markdown()}{END}{tail}")
