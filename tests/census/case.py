"""One census entry: how to build a tiny pipeline of one diffusers pipeline class and call it with CFG on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    """A tiny, CPU-sized, deterministic build of one diffusers pipeline class.

    Attributes:
        pipeline: the diffusers pipeline class name (``"StableDiffusionXLPipeline"``).
        build: ``build()`` returns ``(pipe, kwargs)``: the pipeline in fp32 on the CPU with random weights
            (seeded inside ``build``, so every rank builds the same ones) and the call's keyword arguments
            (prompt embeddings instead of prompts, a small size, 2-3 steps, a guidance scale that turns CFG
            on). The runner adds ``generator`` and ``output_type="pt"`` where the pipeline takes them.
            ``None`` when ``example`` names a registered xcfg example instead.
        example: the name of a registered xcfg example (a plugin's tiny build) to use instead of ``build``.
        output: the attribute of the pipeline output that holds the result.
        parallelize: keyword arguments for ``xcfg.parallelize`` (``{"true_cfg": True}``).
        expect: ``"split"`` (equal to one process, each rank computing its share), ``"refused"`` (xcfg
            refuses it with a reason, before any collective) or ``"whole"`` (a hazard the inferred mode must
            catch: equal to one process, every call run whole, with a warning).
        note: what is special about it (hazards, why refused).
        count_at: a submodule of the denoiser (``"patch_embed"``) whose inputs' batch measures the work, where
            the model's first layer is not fed the batch (ConsisID's face encoder sees batch 1).
    """

    pipeline: str
    build: Callable[[], tuple[Any, dict[str, Any]]] | None = None
    example: str | None = None
    output: str = "images"
    parallelize: dict[str, Any] = field(default_factory=dict)
    expect: str = "split"
    note: str = ""
    count_at: str | None = None
