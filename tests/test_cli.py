"""The ``xcfg`` command: mistakes are caught before any rank starts, in one line with exit code 2;
``--help`` and the argument checks load neither torch nor diffusers; a run reports what was split.

No timing is asserted: the fast paths are proven by what they do not import, and by starting no process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xcfg import _cli

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 600


@pytest.fixture(autouse=True)
def _not_under_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if the command would start torchrun or a run: a user error must stop before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command went on to launch or run instead of refusing")

    monkeypatch.setattr(_cli, "_launch", refuse)
    monkeypatch.setattr(_cli, "_run", refuse)


def _pipeline_folder(root: Path, transformer: str, config: dict | None = None) -> Path:
    folder = root / "pipe"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "SomePipeline", "_diffusers_version": "0.35.0", "transformer": ["diffusers", transformer]}
    ))
    (folder / "transformer" / "config.json").write_text(json.dumps(config or {}))
    return folder


def _user_errors(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """argv -> (the arguments, a phrase the one-line error must hold)."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty").mkdir()
    unknown = _pipeline_folder(tmp_path / "unknown", "NoSuchTransformer3DModel")
    distilled = _pipeline_folder(tmp_path / "distilled", "FluxTransformer2DModel", {"guidance_embeds": True})
    return {
        "unknown example": (["--example", "nope"], "no such example"),
        "size the example lacks": (["--example", "sana", "--size", "full"], "has sizes tiny"),
        "missing model path": (["--model", "/no/such/folder"], "no such folder"),
        "model path is a file": (["--model", str(tmp_path / "a-file")], "is a file"),
        "folder without model_index.json": (["--model", str(tmp_path / "empty")], "model_index.json"),
        "hub id not in the cache": (["--model", "nobody/not-a-cached-model"], "downloads nothing"),
        "model xcfg does not know": (["--model", str(unknown)], "no plugin"),
        "guidance-distilled without true CFG": (["--model", str(distilled)], "--true-cfg-scale"),
        "odd world": (["--nproc", "3"], "does not divide"),
        "odd world over nodes": (["--nproc", "1", "--nnodes", "3", "--rdzv-endpoint", "h:1"], "does not divide"),
        "CFG off": (["--guidance-scale", "1.0"], "turns CFG off"),
        "true CFG off": (["--true-cfg-scale", "1"], "turns true CFG off"),
        "nodes without a rendezvous": (["--nnodes", "2"], "--rdzv-endpoint"),
        "prompt for an example": (["--prompt", "a cat"], "needs --model"),
        "zero steps": (["--steps", "0"], "at least 1"),
        "unknown option": (["--bogus"], "unrecognized arguments"),
        "bad number": (["--nproc", "two"], "invalid int value"),
        "example and model": (["--example", "sd3", "--model", "x"], "not allowed with"),
        "size with a model": (["--model", str(distilled), "--size", "tiny"], "--example only"),
    }


@pytest.mark.unit
@pytest.mark.parametrize("case", [
    "unknown example", "size the example lacks", "missing model path", "model path is a file",
    "folder without model_index.json", "hub id not in the cache", "model xcfg does not know",
    "guidance-distilled without true CFG", "odd world", "odd world over nodes", "CFG off", "true CFG off",
    "nodes without a rendezvous", "prompt for an example", "zero steps", "unknown option", "bad number",
    "example and model", "size with a model",
])
def test_a_user_error_is_one_line_and_exit_code_2_before_anything_starts(case, tmp_path, capsys, no_launch,
                                                                          monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    argv, phrase = _user_errors(tmp_path)[case]
    code = _cli.main(["run", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xcfg: error: ") and phrase in lines[0], lines[0]


@pytest.mark.unit
def test_bare_xcfg_means_run_and_a_leading_option_too(capsys, no_launch):
    assert _cli.main(["--nproc", "3"]) == 2
    assert "does not divide" in capsys.readouterr().err


def _fresh(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE"}}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


PROBE = """
import sys
from xcfg._cli import main
try:
    code = main({argv!r})
except SystemExit as exit:
    code = exit.code
print("EXIT", code, sorted(m for m in ("torch", "diffusers") if m in sys.modules))
"""


@pytest.mark.ranks  # a fresh interpreter: a subprocess
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["--nproc", "3"], ["--model", "/no/such"],
                                  ["--guidance-scale", "1"], ["--bogus"]])
def test_help_and_argument_errors_load_neither_torch_nor_diffusers(argv):
    result = _fresh(PROBE.format(argv=argv))
    assert result.returncode == 0, result.stderr
    exit_code, loaded = result.stdout.rsplit("EXIT ", 1)[1].split(" ", 1)
    assert loaded.strip() == "[]", f"{argv} imported {loaded.strip()}"
    assert exit_code in {"0", "2"}
    if "--help" in argv:
        assert "usage: xcfg" in result.stdout
    else:
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.ranks  # a fresh interpreter: a subprocess
def test_checking_an_example_name_loads_the_registry_but_not_diffusers():
    result = _fresh(PROBE.format(argv=["--example", "nope"]))
    exit_code, loaded = result.stdout.rsplit("EXIT ", 1)[1].split(" ", 1)
    assert exit_code == "2" and "diffusers" not in loaded, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and "no such example" in result.stderr


@pytest.mark.ranks  # a fresh interpreter: a subprocess
def test_the_console_script_runs_the_same_main():
    result = subprocess.run([sys.executable, "-m", "xcfg", "--nproc", "3"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("xcfg: error: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.unit
def test_help_lists_the_options_real_models_need(capsys):
    with pytest.raises(SystemExit) as exit:
        _cli.main(["run", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for option in ("--true-cfg-scale", "--no-vae-tiling", "--dtype", "--compile", "--offload", "--seed", "--prompt",
                   "--negative-prompt", "--nnodes", "--rdzv-endpoint"):
        assert option in text, option


@pytest.mark.unit
def test_torchrun_gets_the_nodes_and_the_rendezvous():
    args = _cli._parser().parse_args(["run", "--nproc", "2", "--nnodes", "2", "--rdzv-endpoint", "head:29400"])
    command = _cli.torchrun_command(args, ["run", "--nproc", "2", "--steps", "3", "--nnodes=2", "--rdzv-endpoint",
                                           "head:29400"])
    assert "--nproc-per-node=2" in command and "--nnodes=2" in command
    assert "--rdzv-endpoint=head:29400" in command and "--rdzv-backend=c10d" in command
    assert "--standalone" not in command
    assert command[command.index("xcfg"):] == ["xcfg", "run", "--steps", "3"], "launch options stay with torchrun"
    single = _cli.torchrun_command(_cli._parser().parse_args(["run"]), [])
    assert "--standalone" in single and not any(a.startswith("--nnodes") for a in single)


@pytest.mark.unit
def test_the_frame_rate_is_the_pipelines():
    class LTXPipeline:
        def __call__(self, prompt=None, frame_rate: int = 25):
            pass

    class CogVideoXPipeline:
        def __call__(self, prompt=None):
            pass

    assert _cli._frame_rate(LTXPipeline(), {}) == 25
    assert _cli._frame_rate(LTXPipeline(), {"frame_rate": 30}) == 30
    assert _cli._frame_rate(CogVideoXPipeline(), {}) == 8


def _run_command(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-m", "xcfg", "run", *argv, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = list(tmp_path.glob("*.json"))
    assert len(reports) == 1, result.stdout
    return result, json.loads(reports[0].read_text())


@pytest.mark.ranks
def test_a_two_rank_run_reports_what_was_split_and_says_each_warning_once(tmp_path):
    result, report = _run_command(tmp_path, "--example", "cogvideox", "--size", "tiny", "--steps", "2", "--nproc", "2")
    split = report["split"]
    assert report["agree"] and report["ranks"] == 2 and report["cfg_group_size"] == 2
    # batched CFG: every call split, rank 0 computed half of every batch
    assert split["calls_split"] == split["denoiser_calls"] > 0
    assert split["samples_computed_here"] * 2 == split["samples_requested"]
    assert split["batch_computed_here"] * 2 == split["batch_requested"]
    assert "split: " in result.stdout and "nothing was split" not in result.stdout
    output = Path(report["output"])
    assert output.exists() and output.suffix in {".gif", ".mp4"}
    said = [line for line in (result.stdout + result.stderr).splitlines() if "warn" in line.lower()]
    repeated = sorted({line for line in said if said.count(line) > 1})
    assert not repeated, repeated


@pytest.mark.ranks  # a fresh interpreter: a subprocess
def test_one_rank_says_nothing_was_split_instead_of_a_speedup(tmp_path):
    result, report = _run_command(tmp_path, "--example", "cogvideox", "--size", "tiny", "--steps", "2", "--nproc", "1")
    assert report["split"]["calls_split"] == 0
    assert "nothing was split (a world of one)" in result.stdout
    assert "->" not in result.stdout  # no "1 rank -> N ranks: N.NNx" speedup figure
