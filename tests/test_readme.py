"""The README stays true to the code: its model table lists every registered model, its test command is CI's."""

from __future__ import annotations

import re
from pathlib import Path

import xcfg

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_supported_models_table_lists_every_registered_model():
    listed = set(re.findall(r"^\| `(\w+)` \|", README, flags=re.MULTILINE))
    registered = {entry.spec.name for entry in xcfg.default_registry().specs()}
    import json

    denoisers = set(json.loads((ROOT / "docs" / "_data" / "cfg-denoisers.json").read_text())["classes"])
    assert registered & denoisers <= listed  # the auxiliary modules (ControlNets) are in docs/models.md


def test_the_supported_models_table_is_the_census_result():
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from census.tables import markdown, readme_section

    assert readme_section(README) == markdown(), "regenerate it: python tests/census/run.py --write"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^(python3 -m venv .*)$", README, flags=re.MULTILINE)
    assert len(commands) == 2, "the README starts with the two set-up commands"
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
