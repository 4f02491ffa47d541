"""Which pipeline classes of the installed diffusers run CFG, and with which denoiser classes: derived from
diffusers itself (every exported ``*Pipeline`` whose ``__call__`` takes a guidance scale), not hand-picked."""

from __future__ import annotations

import functools
import inspect
import re

DENOISER_PARAMETERS = ("transformer", "transformer_2", "unet", "prior")
GUIDANCE_PARAMETERS = {"guidance_scale", "true_cfg_scale", "min_guidance_scale", "max_guidance_scale"}
NOT_DENOISERS = {"UNet2DModel"}  # an unconditional alternative in some annotations (no CFG)


def _class_names(annotation: object) -> list[str]:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    names = re.findall(r"([A-Za-z_][\w]*)(?:'>)?\s*(?:\||$|'>)", text)
    return [n for n in names if n[0].isupper() and n not in {"None", "Optional", "Union"} | NOT_DENOISERS]


@functools.lru_cache(maxsize=1)
def cfg_pipelines() -> dict[str, tuple[str, ...]]:
    """``{pipeline class name: denoiser class names}`` for every CFG pipeline diffusers exports."""
    import diffusers

    found: dict[str, tuple[str, ...]] = {}
    for name in sorted(dir(diffusers)):
        if not name.endswith("Pipeline"):
            continue
        cls = getattr(diffusers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
            continue
        params = inspect.signature(cls.__init__).parameters
        guided = GUIDANCE_PARAMETERS & set(inspect.signature(cls.__call__).parameters) or "guider" in params
        if ".deprecated." in cls.__module__ or not guided:
            continue
        denoisers = [n for p in DENOISER_PARAMETERS if p in params for n in _class_names(params[p].annotation)]
        if denoisers:
            found[name] = tuple(dict.fromkeys(denoisers))
    return found


def cfg_denoisers() -> dict[str, list[str]]:
    """``{denoiser class name: the CFG pipelines that use it}``."""
    by_class: dict[str, list[str]] = {}
    for pipeline, classes in cfg_pipelines().items():
        for cls in classes:
            by_class.setdefault(cls, []).append(pipeline)
    return by_class
