"""Run the census: every case on 2 gloo ranks in one launch, each against one process.

``python tests/census/run.py --write`` runs it and rewrites ``docs/_data/census.json``, from which the
supported-models tables of the docs and the README are generated; the census test runs the same cases
and fails when an outcome differs from that file.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import pathlib
import sys
import traceback
from typing import Any

import torch

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "docs" / "_data" / "census.json"
STEPS = 4  # two-call: N + 1 calls per rank against 2N for one process, so N >= 3 shows the saving
TOLERANCE = 1e-4


def cases() -> dict[str, Any]:
    """Every case by name: each registered xcfg example, then the ``cases_*.py`` modules' builds."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    import xcfg
    from census.case import Case

    found: dict[str, Case] = {}
    for example in xcfg.default_registry().examples():
        found[f"example:{example.name}"] = Case(pipeline="", example=example.name)
    for path in sorted(HERE.glob("cases_*.py")):
        module = importlib.import_module(f"census.{path.stem}")
        for case in module.CASES:
            found[case.pipeline if case.example is None else f"example:{case.example}"] = case  # notes and output
    return found


def _build(case: Any) -> tuple[Any, dict[str, Any], str]:
    import xcfg

    if case.example is not None:
        run = xcfg.build_example(case.example, size="tiny")
        return run.pipe, dict(run.kwargs), run.output
    pipe, kwargs = case.build()
    return pipe, dict(kwargs), case.output


def _denoisers(pipe: Any) -> list[torch.nn.Module]:
    from xcfg._parallelize import AUXILIARY_ATTRIBUTES, DENOISER_ATTRIBUTES

    found = [getattr(pipe, name, None) for name in (*DENOISER_ATTRIBUTES, *AUXILIARY_ATTRIBUTES)]
    return [m for m in found if isinstance(m, torch.nn.Module)]


def _call(pipe: Any, kwargs: dict[str, Any], output: str, count_at: str | None = None) -> tuple[torch.Tensor, int]:
    """The pipeline's output as one tensor, and the work its denoisers did: samples reaching their layers."""
    from xcfg.testing import BatchCounter

    params = inspect.signature(type(pipe).__call__).parameters
    call = dict(kwargs)
    if "generator" in params:
        call["generator"] = torch.Generator().manual_seed(7)
    if "output_type" in params and "output_type" not in call:
        call["output_type"] = "pt"
    if count_at is not None:  # the batch reaching one named layer of the first denoiser
        seen: list[int] = []
        layer = _denoisers(pipe)[0].get_submodule(count_at)
        hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
        try:
            result = pipe(**call)
        finally:
            hook.remove()
        work = sum(seen)
    else:
        with contextlib.ExitStack() as stack:
            counters = [stack.enter_context(BatchCounter(m)) for m in _denoisers(pipe)]
            result = pipe(**call)
        work = sum(sum(c.batches) for c in counters)
    value = getattr(result, output) if not isinstance(result, (tuple, list)) else result[0]
    return _tensor(value), work


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, (list, tuple)):
        return torch.stack([_tensor(v) for v in value])
    import numpy as np

    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def run_case(case: Any) -> dict[str, Any]:
    """One case on this rank: the plain pipeline, then parallelized; what each computed and how they agree."""
    import xcfg
    from xcfg.testing import capture_notices, relative_error

    pipe, kwargs, output = _build(case)
    if "num_inference_steps" in kwargs:
        kwargs["num_inference_steps"] = max(int(kwargs["num_inference_steps"]), STEPS)
    result: dict[str, Any] = {
        "pipeline": type(pipe).__name__,
        "denoisers": sorted({type(m).__name__ for m in _denoisers(pipe)}),
        "expect": case.expect,
        "note": case.note,
    }
    expected, single_work = _call(pipe, kwargs, output, case.count_at)
    options = dict(case.parallelize)
    if float(kwargs.get("true_cfg_scale", 1.0) or 1.0) > 1.0:
        options.setdefault("true_cfg", True)  # the call runs true CFG: a cond and an uncond call per step
    try:
        handle = xcfg.parallelize(pipe, **options)
    except xcfg.RefusedError as err:
        return {**result, "status": "refused", "reason": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
    with capture_notices() as caught:
        actual, work = _call(pipe, kwargs, output, case.count_at)
    inferred = [name for name, spec in handle.specs.items() if spec is None]
    result.update(
        status="inferred" if inferred else "plugin",
        error=relative_error(actual, expected),
        single_work=single_work,
        work=work,
        split=sum(w.style.stats.split for w in handle.wrapped),
        predictions=sum(w.style.stats.predictions for w in handle.wrapped),
        warnings=sorted({w[:300] for w in caught if w.startswith("xcfg")}),
        source=handle.plugin_source(),
    )
    handle.remove()
    return result


def verdict(result: dict[str, Any]) -> tuple[bool, str]:
    """Whether a case passed: equal to one process and each rank computing only its share (or refused,
    when refusal is what the case expects)."""
    if result.get("status") == "error":
        return False, result["traceback"][-1500:]
    if result["expect"] == "refused" or result["status"] == "refused":
        ok = result["expect"] == "refused" and result["status"] == "refused"
        return ok, result.get("reason", f"expected {result['expect']}, got {result['status']}")
    if result["error"] > TOLERANCE:
        return False, f"relative error {result['error']:.2e} against one process"
    if result["expect"] == "whole":  # a hazard inference must catch: equal, run whole, and said so
        said = any("whole" in w or "split none" in w for w in result["warnings"])
        return said and result["work"] >= result["single_work"], f"expected whole with a warning: {result['warnings']}"
    if result["split"] == 0 or result["work"] >= result["single_work"]:
        return False, (f"nothing split: the rank computed {result['work']} samples against {result['single_work']} "
                       f"for one process; {result['warnings']}")
    return True, "ok"


def census_rank(rank: int, world: int, names: list[str]) -> dict[str, dict[str, Any]]:
    torch.set_num_threads(1)
    everything = cases()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            results[name] = run_case(everything[name])
        except Exception:  # the same on every rank: the builds and the calls are deterministic
            results[name] = {"status": "error", "traceback": traceback.format_exc(), "expect": everything[name].expect}
    return results


def run(names: list[str] | None = None, timeout: float = 3000.0) -> dict[str, dict[str, Any]]:
    """Every case (or ``names``) on 2 gloo ranks; rank 0's results, after checking the ranks agree."""
    from xcfg.testing import run_ranks

    names = sorted(cases()) if names is None else names
    rank0, rank1 = run_ranks(census_rank, names, timeout=timeout)
    for name in names:  # both ranks must have seen the same thing
        a, b = rank0[name], rank1[name]
        if a.get("status") != b.get("status") or abs(a.get("error", 0) - b.get("error", 0)) > TOLERANCE:
            rank0[name] = {**a, "status": "error", "traceback": f"the ranks disagree: {a} / {b}"}
    return rank0


def summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What docs/_data/census.json keeps of each case."""
    kept: dict[str, dict[str, Any]] = {}
    for name, result in sorted(results.items()):
        ok, why = verdict(result)
        kept[name] = {
            "pipeline": result.get("pipeline", name),
            "denoisers": result.get("denoisers", []),
            "status": result.get("status"),
            "passed": ok,
            "why": None if ok else why[:300],
            "reason": result.get("reason"),
            "note": result.get("note", ""),
            "expect": result.get("expect", "split"),
        }
    return kept


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="cases to run (default: all)")
    parser.add_argument("--write", action="store_true", help=f"rewrite {RESULTS.relative_to(HERE.parents[1])}")
    args = parser.parse_args()
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    results = summary(run(args.names or None))
    for name, entry in results.items():
        print(f"{'PASS' if entry['passed'] else 'FAIL'} {entry['status']:9} {name}: {entry['why'] or ''}")
    if args.write:
        if args.names:
            previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            results = {**previous, **results}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        import diffusers
        from census.discover import cfg_denoisers
        from census.tables import CLASSES, rewrite_readme

        CLASSES.write_text(json.dumps({"diffusers": diffusers.__version__, "classes": sorted(cfg_denoisers())}, indent=1) + "\n")
        rewrite_readme(HERE.parents[1] / "README.md")
        print(f"wrote {RESULTS}, {CLASSES.name} and the README's table")


if __name__ == "__main__":
    main()
