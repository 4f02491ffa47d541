"""From the benchmark's results (``results.json``) to the files people read: the table, the chart, the README.

Every number here is read from the results; nothing is estimated or extrapolated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["console", "markdown", "plot", "readme", "write_all"]

COLUMNS = (
    "model",
    "size",
    "steps",
    "1 GPU s/step",
    "1 GPU + `parallelize` s/step (overhead)",
    "seed wrapper, 2 GPUs s/step (speedup)",
    "xcfg, 2 GPUs s/step",
    "per-step speedup",
    "end to end, 1 GPU (s)",
    "end to end, 2 GPUs (s)",
    "end-to-end speedup",
    "peak GiB/rank, 1 GPU",
    "peak GiB/rank, 2 GPUs",
    "rel. error, 2 vs 1 GPU",
)

COMPILED_COLUMNS = (
    "model",
    "compiled, 1 GPU s/step",
    "compiled xcfg, 2 GPUs s/step",
    "speedup vs compiled 1 GPU",
    "speedup vs eager 1 GPU",
    "end to end compiled, 1 GPU vs 2 GPUs (s)",
    "graph breaks (1 GPU, 2 GPUs)",
)

DASH = "—"


# -- numbers -----------------------------------------------------------------------------------------


def _phase(model: dict[str, Any], key: str) -> dict[str, Any]:
    return model.get("phases", {}).get(key) or {}


def _get(model: dict[str, Any], key: str, field: str) -> Any:
    return _phase(model, key).get(field)


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def _peak(model: dict[str, Any], key: str) -> float | None:
    values = [v for v in _get(model, key, "peak_gib") or [] if v is not None]
    return max(values) if values else None


def summary(model: dict[str, Any]) -> dict[str, Any]:
    """The derived numbers of one model, as the table shows them (also stored in results.json)."""
    one = _get(model, "plain_1gpu", "step_median_s")
    two = _get(model, "xcfg_2gpu", "step_median_s")
    c1 = _get(model, "compiled_1gpu", "step_median_s")
    c2 = _get(model, "compiled_xcfg_2gpu", "step_median_s")
    over = _ratio(_get(model, "xcfg_1gpu", "step_median_s"), one)
    return {
        "step_1gpu_s": one,
        "step_1gpu_parallelize_s": _get(model, "xcfg_1gpu", "step_median_s"),
        "overhead_1gpu_pct": None if over is None else (over - 1) * 100,
        "step_seed_2gpu_s": _get(model, "seed_2gpu", "step_median_s"),
        "speedup_seed": _ratio(one, _get(model, "seed_2gpu", "step_median_s")),
        "step_xcfg_2gpu_s": two,
        "speedup_step": _ratio(one, two),
        "xcfg_vs_seed": _ratio(_get(model, "seed_2gpu", "step_median_s"), two),
        "e2e_1gpu_s": _get(model, "plain_1gpu", "e2e_s"),
        "e2e_2gpu_s": _get(model, "xcfg_2gpu", "e2e_s"),
        "speedup_e2e": _ratio(_get(model, "plain_1gpu", "e2e_s"), _get(model, "xcfg_2gpu", "e2e_s")),
        "decode_s": _get(model, "xcfg_2gpu", "decode_s"),
        "peak_1gpu_gib": _peak(model, "plain_1gpu"),
        "peak_2gpu_gib": _peak(model, "xcfg_2gpu"),
        "rel_error": _get(model, "xcfg_2gpu", "rel_error"),
        "step_compiled_1gpu_s": c1,
        "step_compiled_xcfg_2gpu_s": c2,
        "speedup_compiled": _ratio(c1, c2),
        # eager 1 GPU of the compiled phases' own launch when they came from another one (see run.py --merge)
        "speedup_compiled_vs_eager": _ratio(_get(model, "compiled_xcfg_2gpu", "reference_step_median_s") or one, c2),
    }


def _s(x: Any) -> str:
    return DASH if not isinstance(x, (int, float)) else f"{x:.4g}"


def _x(x: Any) -> str:
    return DASH if x is None else f"{x:.2f}x"


def _gib(x: Any) -> str:
    return DASH if x is None else f"{x:.1f}"


def _size(model: dict[str, Any]) -> str:
    call = model.get("call") or {}
    if "height" not in call:
        return DASH
    size = f"{call['height']}x{call['width']}"
    return f"{call['num_frames']} frames {size}" if "num_frames" in call else size


# -- markdown ----------------------------------------------------------------------------------------


def _cards(results: dict[str, Any]) -> list[str]:
    return [_card(run.get("environment") or {}) for run in results["runs"]]


def _card(env: dict[str, Any]) -> str:
    card = env.get("card") or "unknown card"
    gpus = env.get("gpus")
    memory = f", {env['gpu_memory_gib']} GiB each" if env.get("gpu_memory_gib") else ""
    return f"{gpus}x {card}{memory}" if gpus else card


def _versions(env: dict[str, Any]) -> str:
    parts = [f"{name} {env[name]}" for name in ("torch", "diffusers", "xcfg", "cuda", "nccl", "python") if env.get(name)]
    return ", ".join(parts)


def table(results: dict[str, Any]) -> str:
    cards = _cards(results)
    several = len(set(cards)) > 1
    columns = (*COLUMNS, "card") if several else COLUMNS
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for model in results["models"]:
        v = summary(model)
        over = v["overhead_1gpu_pct"]
        row = [
            model.get("model") or model["example"],
            _size(model),
            str(model.get("steps", DASH)),
            _s(v["step_1gpu_s"]),
            _s(v["step_1gpu_parallelize_s"]) + ("" if over is None else f" ({over:+.1f}%)"),
            _s(v["step_seed_2gpu_s"]) + ("" if v["speedup_seed"] is None else f" ({_x(v['speedup_seed'])})"),
            _s(v["step_xcfg_2gpu_s"]),
            _x(v["speedup_step"]),
            _s(v["e2e_1gpu_s"]),
            _s(v["e2e_2gpu_s"]),
            _x(v["speedup_e2e"]),
            _gib(v["peak_1gpu_gib"]),
            _gib(v["peak_2gpu_gib"]),
            DASH if v["rel_error"] is None else f"{v['rel_error']:.1e}",
        ]
        if model.get("status", "ok") != "ok":
            row[0] += f" ({model['status']})"
        if several:
            row.append(cards[model.get("run", 0)])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def compiled_table(results: dict[str, Any]) -> str | None:
    rows = [m for m in results["models"] if _phase(m, "compiled_1gpu") or _phase(m, "compiled_xcfg_2gpu")]
    if not rows:
        return None
    lines = ["| " + " | ".join(COMPILED_COLUMNS) + " |", "|" + "---|" * len(COMPILED_COLUMNS)]
    for model in rows:
        v = summary(model)
        breaks = [_get(model, k, "graph_breaks") for k in ("compiled_1gpu", "compiled_xcfg_2gpu")]
        lines.append("| " + " | ".join([
            model.get("model") or model["example"],
            _s(v["step_compiled_1gpu_s"]),
            _s(v["step_compiled_xcfg_2gpu_s"]),
            _x(v["speedup_compiled"]),
            _x(v["speedup_compiled_vs_eager"]),
            f"{_s(_get(model, 'compiled_1gpu', 'e2e_s'))} vs {_s(_get(model, 'compiled_xcfg_2gpu', 'e2e_s'))}",
            ", ".join(DASH if b is None else str(b) for b in breaks),
        ]) + " |")
    return "\n".join(lines)


LAYOUT_COLUMNS = ("model", "layout", "GPUs", "s/step", "per-step speedup", "end to end (s)", "end-to-end speedup",
                  "peak GiB/rank", "rel. error vs 1 GPU")


def layouts_table(results: dict[str, Any]) -> str | None:
    """One row per model and layout (``--layouts``), each against the same launch's 1-GPU run."""
    lines = ["| " + " | ".join(LAYOUT_COLUMNS) + " |", "|" + "---|" * len(LAYOUT_COLUMNS)]
    for model in results["models"]:
        base = _phase(model, "plain_1gpu")
        for key, phase in model.get("phases", {}).items():
            if not key.startswith("layout_"):
                continue
            name = model.get("model") or model["example"]
            if phase.get("refused"):
                lines.append(f"| {name} | {key[7:]} | {phase.get('gpus', DASH)} | refused: {phase['refused']} |"
                             + " |" * (len(LAYOUT_COLUMNS) - 4))
                continue
            lines.append("| " + " | ".join([
                name, key[7:], str(phase.get("gpus")), _s(phase.get("step_median_s")),
                _x(_ratio(base.get("step_median_s"), phase.get("step_median_s"))), _s(phase.get("e2e_s")),
                _x(_ratio(base.get("e2e_s"), phase.get("e2e_s"))), _gib(_peak(model, key)),
                _s(phase.get("rel_error")),
            ]) + " |")
    return "\n".join(lines) if len(lines) > 2 else None


def _measured_in(results: dict[str, Any], index: int) -> list[str]:
    """The models with phases measured in run ``index`` (a model's phases may come from several runs)."""
    return [
        m.get("model") or m["example"]
        for m in results["models"]
        if any(p.get("run", m.get("run", 0)) == index for p in m["phases"].values())
    ]


def card_line(results: dict[str, Any]) -> str:
    """One line per card and software versions, naming the models measured on it."""
    cards: dict[tuple[str, str], list[str]] = {}
    for index, run in enumerate(results["runs"]):
        env = run.get("environment") or {}
        names = cards.setdefault((_card(env), _versions(env)), [])
        names += [n for n in _measured_in(results, index) if n not in names]
    if len(cards) == 1:
        (card, versions), = cards
        return f"Card: {card}; {versions}."
    return "\n".join(f"Card: {card} ({', '.join(names)}); {versions}." for (card, versions), names in cards.items())


def notes(results: dict[str, Any]) -> str:
    models = results["models"]
    decodes = [
        f"{m.get('model') or m['example']} {summary(m)['decode_s']:.3g} s"
        for m in models if isinstance(summary(m)["decode_s"], (int, float))
    ]
    tiled = [m.get("model") or m["example"] for m in models if m.get("vae_tiling")]
    dtypes = sorted({m["dtype"] for m in models if m.get("dtype")}) or ["bf16"]
    cpu = all(run.get("mode") == "cpu" for run in results["runs"])
    lines = [
        "- **CPU smoke test** (`--cpu`): each \"GPU\" is a gloo rank on the CPU running a tiny config; these "
        "numbers only show that the runner works, not what xcfg buys.",
    ] if cpu else []
    lines += [
        "- **s/step**: median of the intervals between consecutive step ends of one pipeline call (the first "
        "step, which also holds the call's set-up, is left out), after a warm-up call; a CUDA event recorded "
        "in `callback_on_step_end` (no synchronize per step, so the CPU queues ahead as in a user's run). 1 GPU: every GPU runs the whole pipeline by itself, "
        "all at the same time (rank 0 reported); the overhead compares `xcfg.parallelize(pipe, group=xcfg.CFGGroup.single())`, what a "
        "world of one gets, with the plain pipeline. The seed wrapper is `benchmarks/_seed_wrapper.py`.",
        "- **end to end**: one pipeline call of *steps* steps, from the call to the decoded output "
        "(`output_type=\"pt\"`): latent preparation, the denoising loop and the VAE decode"
        + (f" (tiled for {', '.join(tiled)}, in every phase)" if tiled else "") + ".",
        "- **What every rank repeats** (why end to end falls short of per step): text encoding is skipped here "
        "(precomputed random prompt embeddings; with real text encoders every rank would encode the prompts "
        "again); latent preparation and the scheduler step (small); and the VAE decode, which runs whole on "
        "every rank unless it is split"
        + (f": measured on the 2-GPU run, {', '.join(decodes)}." if decodes else "."),
        "- **peak GiB/rank**: `torch.cuda.max_memory_allocated()` over the phase (warm-up and timed call, VAE "
        "decode included), reset between phases; the largest over the ranks.",
        "- **rel. error**: ‖out₂ − out₁‖ / ‖out₁‖ of the decoded output, xcfg on 2 GPUs vs the plain pipeline on "
        f"1 GPU, same seed, {'/'.join(dtypes)} weights (the halves run at batch 1 instead of 2, so kernels may "
        "round differently); latent errors and the seed wrapper's are in results.json.",
        "- Models: the tiny configs of `xcfg_plugins` with random weights, random prompt embeddings."
        if cpu else
        "- Models: the published configs in `xcfg_plugins` (size \"full\"; transformer and VAE) with random "
        "weights built on the GPU (no download), and random prompt embeddings of the published shapes instead "
        "of text encoders.",
    ]
    failed = [m for m in models if m.get("status", "ok") != "ok"]
    for model in failed:
        lines.append(f"- **{model['example']}: {model['status']}**: {model.get('reason', '')}.")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    parts = ["# xcfg benchmark: 1 GPU vs 2 GPUs", "", card_line(results), "", table(results), ""]
    compiled = compiled_table(results)
    if compiled:
        parts += ["torch.compile (the transformer; `--compile`):", "", compiled, ""]
    layouts = layouts_table(results)
    if layouts:
        parts += ["Layouts (`--layouts`; CFG x ring x Ulysses, against the same launch's 1 GPU):", "", layouts, ""]
    parts += [notes(results), ""]
    return "\n".join(parts)


def console(results: dict[str, Any]) -> str:
    """What the runner prints last: the card and the table(s)."""
    parts = [card_line(results), "", table(results)]
    compiled = compiled_table(results)
    if compiled:
        parts += ["", compiled]
    layouts = layouts_table(results)
    if layouts:
        parts += ["", layouts]
    return "\n".join(parts)


def readme(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run.py` (see `benchmarks/README.md`): 1 GPU vs 2 GPUs on the same machine, "
        "full-size models with random weights. `results.json` holds every number (each step's time, each rank's "
        "values, the seed wrapper's and the 1-GPU `parallelize` runs); `results.md` is the table below; "
        "`speedup.png` the chart.",
        "",
        table(results),
        "",
    ]
    compiled = compiled_table(results)
    if compiled:
        lines += [compiled, ""]
    layouts = layouts_table(results)
    if layouts:
        lines += [layouts, ""]
    lines += [notes(results), "", "![per-step and end-to-end speedup](speedup.png)", "", "## Where they come from", ""]
    for index, run in enumerate(runs):
        env = run.get("environment") or {}
        names = []
        for m in results["models"]:
            phases = [k for k, p in m["phases"].items() if p.get("run", m.get("run", 0)) == index]
            if phases:
                names.append(f"{m.get('model') or m['example']} ({', '.join(phases)})")
        lines += [
            f"- {'; '.join(names) or 'no model'}: {_card(env)}, {run.get('created', 'unknown date')}",
            f"  - versions: {_versions(env)}",
        ]
        if run.get("code"):
            lines.append(f"  - code: {run['code']}")
        if run.get("launcher"):
            lines.append(f"  - device call: `{run['launcher']}`")
        lines.append(f"  - command: `{run.get('command', '?')}`")
    lines += [
        "",
        "Each row's 1-GPU and 2-GPU numbers come from one invocation on one machine; rows from different "
        "invocations may come from different cards (named above).",
        "",
    ]
    return "\n".join(lines)


# -- chart -------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> bool:
    """Grouped bars of the speedups per model, with the 2x limit; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = [
        ("seed wrapper, per step", "speedup_seed"),
        ("xcfg, per step", "speedup_step"),
        ("xcfg, end to end", "speedup_e2e"),
        ("xcfg + compile vs eager 1 GPU, per step", "speedup_compiled_vs_eager"),
    ]
    models = results["models"]
    values = {key: [summary(m)[key] for m in models] for _, key in series}
    series = [(label, key) for label, key in series if any(v is not None for v in values[key])]
    names = [m.get("model") or m["example"] for m in models]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(models) + 2), 4.8), dpi=120)
    width = 0.8 / max(1, len(series))
    for i, (label, key) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
        ys = [v or 0.0 for v in values[key]]
        bars = ax.bar(xs, ys, width, label=label)
        for bar, v in zip(bars, values[key]):
            if v is not None:
                ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.axhline(2.0, color="grey", linestyle="--", linewidth=1, label="2 GPUs: limit")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(models)), names)
    ax.set_ylabel("speedup over 1 GPU")
    top = max([v for key in values for v in values[key] if v is not None] + [2.0])
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"xcfg, 1 vs 2 GPUs: {'; '.join(sorted(set(_cards(results))))}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, len(series) + 1), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# -- files -------------------------------------------------------------------------------------------


def write_all(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md, speedup.png (if matplotlib is there) and README.md into ``out``."""
    for model in results["models"]:
        model["summary"] = summary(model)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    (out / "README.md").write_text(readme(results))
    if not plot(results, out / "speedup.png"):
        print("bench: matplotlib is missing (pip install -e '.[bench]'): no speedup.png", flush=True)
