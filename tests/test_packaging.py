"""The distribution: its metadata says what the code needs, it builds without a warning, and the wheel
installs beside the diffusers already there (offline) and imports.

- ``requires-python`` is true to the code (the core calls ``BaseException.add_note``, new in 3.11);
- diffusers is a range, not a pin, so xcfg installs beside another diffusers;
- the SPDX license string and the LICENSE file (the Apache-2.0 text) travel in the wheel and the sdist;
- ``pip install`` of the wheel into a fresh venv that sees this environment's packages (a ``.pth`` file)
  installs xcfg alone, keeps the diffusers it finds, and ``import xcfg`` plus the ``xcfg`` command work.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
BUILD_TIMEOUT = 300


def _requirement(name: str) -> Requirement:
    for text in PROJECT["dependencies"]:
        requirement = Requirement(text)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"{name} is not a dependency")


@pytest.mark.unit
def test_requires_python_matches_what_the_code_uses():
    uses_add_note = any(".add_note(" in p.read_text() for p in (ROOT / "xcfg").glob("*.py"))
    floor = Version(PROJECT["requires-python"].removeprefix(">="))
    if uses_add_note:
        assert floor >= Version("3.11"), "the code calls BaseException.add_note (3.11+): requires-python must say so"
    listed = {c.rsplit(" ", 1)[1] for c in PROJECT["classifiers"] if c.startswith("Programming Language :: Python :: 3.")}
    assert min(Version(v) for v in listed) == floor, "the classifiers' oldest Python is requires-python's"


@pytest.mark.unit
def test_diffusers_is_a_range_that_holds_the_installed_version():
    requirement = _requirement("diffusers")
    assert not any(spec.operator in {"==", "==="} for spec in requirement.specifier), "a pin blocks installs beside others"
    lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert lower, "diffusers needs a lower bound: the oldest version xcfg was tried on"
    installed = metadata.version("diffusers")
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"the installed diffusers {installed} is outside the declared {requirement.specifier}"
    )


@pytest.mark.unit
def test_license_is_an_spdx_string_with_its_file():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"]), "SPDX and license classifiers conflict"


def _build(source: Path, out: Path) -> tuple[Path, Path, str]:
    """Build the wheel and the sdist with setuptools' PEP 517 backend, offline (no isolated env), from a
    copy of the project's files (setuptools writes work folders beside them)."""
    pytest.importorskip("setuptools", minversion="77", reason="the SPDX license string needs setuptools >= 77")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("xcfg", "xcfg_plugins"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # its notice is the env's, not ours
    built, output = [], ""
    for hook in ("build_sdist", "build_wheel"):  # one process each: the backend keeps state between the two
        code = f"import setuptools.build_meta as backend, sys; print('BUILT', backend.{hook}(sys.argv[1]))"
        result = subprocess.run(
            [sys.executable, "-c", code, str(out)], cwd=source, env=env, capture_output=True, text=True,
            timeout=BUILD_TIMEOUT,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        built.append(result.stdout.rpartition("BUILT ")[2].strip())
        output += result.stdout + result.stderr
    sdist_name, wheel_name = built
    return out / wheel_name, out / sdist_name, output


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist"))


@pytest.mark.ranks  # subprocesses: the build backend
def test_wheel_and_sdist_build_without_warnings(built):
    wheel, sdist, output = built
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warnings, "\n".join(warnings)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "xcfg/py.typed" in names and "xcfg_plugins/cogvideox.py" in names
    assert "License-Expression: Apache-2.0" in meta
    assert f"Requires-Python: {PROJECT['requires-python']}" in meta
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("/LICENSE") for n in archive.getnames())


@pytest.mark.ranks  # subprocesses: venv, pip, the installed command
def test_wheel_installs_beside_the_diffusers_present_and_imports(built, tmp_path):
    """A fresh venv that sees this environment's packages: pip, offline, installs xcfg and nothing else,
    so the diffusers there stays; then ``import xcfg`` and ``xcfg --help`` work from the installed copy."""
    wheel, _, _ = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # this environment's packages (torch, diffusers, pip, ...) behind the venv's own, except xcfg itself
    outer = tmp_path / "outer"
    outer.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not (entry.name.startswith(("xcfg", "__editable__")) or entry.suffix == ".pth"):
            (outer / entry.name).symlink_to(entry)
    Path(purelib, "_outer_env.pth").write_text(f"{outer}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CONFIG_FILE=os.devnull)
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheel.parent), "xcfg"],
        env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed = [line for line in install.stdout.splitlines() if line.startswith("Successfully installed")]
    assert installed == ["Successfully installed xcfg-0.1.0"], install.stdout[-3000:]
    probe = (
        "import sys, importlib.metadata as m, xcfg;"
        "print(xcfg.__file__); print(m.version('diffusers'));"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    location, diffusers_version, torch_loaded = result.stdout.split()
    assert Path(location).is_relative_to(venv), f"imported {location}, not the installed wheel"
    assert diffusers_version == metadata.version("diffusers")
    assert torch_loaded == "False", "import xcfg should not import torch"
    command = subprocess.run([venv / "bin" / "xcfg", "--help"], capture_output=True, text=True, timeout=120)
    assert command.returncode == 0 and "usage: xcfg" in command.stdout, command.stderr[-3000:]


@pytest.mark.unit
def test_the_entry_points_name_modules_that_exist():
    for name, target in PYPROJECT["project"]["entry-points"]["xcfg"].items():
        path = ROOT / (target.replace(".", "/") + ".py")
        assert path.is_file(), f"entry point {name} -> {target}: no {path.relative_to(ROOT)}"
        ast.parse(path.read_text())
    module, _, function = PROJECT["scripts"]["xcfg"].partition(":")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
