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
        expect: ``"split"`` (equal to one process, each rank computing its share) or ``"refused"`` (xcfg
            refuses it with a reason, before any collective).
        note: what is special about it (hazards, why refused).
    """

    pipeline: str
    build: Callable[[], tuple[Any, dict[str, Any]]] | None = None
    example: str | None = None
    output: str = "images"
    parallelize: dict[str, Any] = field(default_factory=dict)
    expect: str = "split"
    note: str = ""
