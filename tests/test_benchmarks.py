"""The benchmark runner's CPU mode: 2 gloo ranks under torchrun, tiny configs, every file written.

This keeps ``benchmarks/run.py`` from rotting between GPU runs: it launches torchrun itself, runs every
phase (1 rank plain, 1 rank with ``parallelize``, the seed wrapper and xcfg on 2 ranks) and writes
results.json, results.md, speedup.png and README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "benchmarks" / "run.py"
MODELS = ("cogvideox", "mochi", "sd3.5-large", "sd3")
PHASES = ("plain_1gpu", "xcfg_1gpu", "seed_2gpu", "xcfg_2gpu")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cpu_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = _run("--cpu", "--out", str(out), timeout=240)
    assert done.returncode == 0, f"runner failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    # the table is what the runner prints last
    assert done.stdout.rstrip().splitlines()[-1].startswith("| SD3 |"), done.stdout[-2000:]
    return out


def test_cpu_mode_writes_json_with_every_phase(cpu_results: Path) -> None:
    results = json.loads((cpu_results / "results.json").read_text())
    run = results["runs"][0]
    assert run["mode"] == "cpu" and "--cpu" in run["command"]
    assert {"torch", "diffusers", "xcfg", "card"} <= set(run["environment"])
    assert [m["example"] for m in results["models"]] == list(MODELS)
    for model in results["models"]:
        assert model["status"] == "ok", model
        assert model["size"] == "tiny" and model["world_size"] == 2 and model["steps"] == 3
        assert set(PHASES) <= set(model["phases"])
        for key in PHASES:
            phase = model["phases"][key]
            assert len(phase["step_s"]) == 2 and phase["step_median_s"] > 0, (model["example"], key)
            assert phase["finite"]
        for key in ("seed_2gpu", "xcfg_2gpu"):
            phase = model["phases"][key]
            assert phase["gpus"] == 2 and phase["ranks_identical"], (model["example"], key)
            assert phase["e2e_s"] > phase["denoise_s"] > 0
            # float32 on the CPU: the split run matches the whole-batch run up to rounding
            assert phase["rel_error"] < 1e-4 and phase["rel_error_latents"] < 1e-4, (model["example"], key)
        assert model["phases"]["xcfg_1gpu"]["rel_error_latents"] < 1e-4
        summary = model["summary"]
        assert summary["speedup_step"] > 0 and summary["speedup_e2e"] > 0
        assert summary["overhead_1gpu_pct"] is not None


def test_cpu_mode_writes_table_chart_and_readme(cpu_results: Path) -> None:
    table = (cpu_results / "results.md").read_text()
    assert "| model | size | steps | 1 GPU s/step |" in table and "per-step speedup" in table
    assert "Card: CPU" in table and "What every rank repeats" in table
    for name in ("CogVideoX", "Mochi", "SD3.5-large", "SD3"):
        assert f"| {name} |" in table
    png = (cpu_results / "speedup.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    readme = (cpu_results / "README.md").read_text()
    assert "benchmarks/run.py --cpu --out" in readme and "speedup.png" in readme


def test_merge_combines_result_files(cpu_results: Path, tmp_path: Path) -> None:
    done = _run("--merge", str(cpu_results), str(cpu_results / "results.json"), "--out", str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    merged = json.loads((tmp_path / "results.json").read_text())
    assert len(merged["runs"]) == 1  # the same models twice: the later copy wins, its run is kept
    assert [m["example"] for m in merged["models"]] == list(MODELS)
    assert (tmp_path / "speedup.png").exists() and (tmp_path / "README.md").exists()


@pytest.mark.ranks
@pytest.mark.timeout(180)
def test_the_proxy_cost_benchmark_runs_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks/proxy_cost.py --cpu`` times direct, proxy and empty calls on one pool and writes them."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import proxy_cost

    out = tmp_path / "proxy.json"
    assert proxy_cost.main(["--cpu", "--repeats", "2", "--start-method", "forkserver", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["nproc"] == 2 and result["repeats"] == 2
    for key in ("direct_s", "proxy_s", "round_trip_s"):
        assert len(result[key]) == 2 and all(t > 0 for t in result[key]), key
    assert result["output_bytes"] > 0 and "cost_median_s" in result
