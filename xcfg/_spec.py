"""Model specs: what a plugin declares about a denoiser class, validated by pydantic and frozen."""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import SpecError
from ._layout import ContextParallelSpec

__all__ = ["BatchInput", "CFGStyle", "Example", "ExampleRun", "ModelSpec", "VAESpec"]

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class CFGStyle(str, enum.Enum):
    """How a pipeline evaluates the two CFG branches of a step.

    Attributes:
        BATCHED: one denoiser call per step on the batch ``[uncond, cond]`` (CogVideoX, SD3, Mochi).
            xcfg splits the batch across the ranks and all-gathers the output.
        TWO_CALL: two denoiser calls per step at batch B, cond then uncond, usually inside
            ``transformer.cache_context("cond")`` and ``("uncond")`` (Wan, Qwen-Image, Flux and
            HunyuanVideo with ``true_cfg_scale``). Two ranks compute the two calls of a step at once and
            exchange the results; ``batch_inputs`` is not needed.
        NONE: the model has no uncond branch to split (guidance-distilled models). ``parallelize``
            refuses it with the spec's ``no_cfg_reason``.

    Example:
        >>> from xcfg import CFGStyle
        >>> CFGStyle("batched") is CFGStyle.BATCHED
        True
    """

    BATCHED = "batched"
    TWO_CALL = "two_call"
    NONE = "none"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class _Spec(_Frozen):
    """A top-level spec: a validation error becomes a :class:`xcfg.SpecError` naming every bad field."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise SpecError(_describe(err, type(self).__name__, data.get("model", data.get("name")))) from None


class _ClassSpec(_Spec):
    """A spec about one class (or a lazy import path to it): validation, naming and lazy import."""

    model: type | str

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: type | str) -> type | str:
        if isinstance(value, str):
            if not _IMPORT_PATH.match(value):
                raise ValueError(f"{value!r} is not a lazy import path; write 'package.module:ClassName'")
        elif not issubclass(value, torch.nn.Module):
            raise ValueError(f"{value!r} is not a torch.nn.Module subclass")
        return value

    @property
    def name(self) -> str:
        """The class name, for messages and tables."""
        if isinstance(self.model, str):
            return self.model.rpartition(":")[2].rpartition(".")[2]
        return self.model.__name__

    @property
    def path(self) -> str:
        """``module:QualName`` of the class, without importing it."""
        if isinstance(self.model, str):
            return self.model
        return f"{self.model.__module__}:{self.model.__qualname__}"

    def resolve(self) -> type:
        """Import and return the class.

        Raises:
            SpecError: the import path does not lead to a ``torch.nn.Module`` subclass.
        """
        if not isinstance(self.model, str):
            return self.model
        module_name, _, qualname = self.model.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise SpecError(f"spec for {self.model!r}: field 'model' cannot be imported: {err}") from err
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            raise SpecError(f"spec for {self.model!r}: field 'model' is not a torch.nn.Module subclass")
        return obj


class BatchInput(_Frozen):
    """One forward argument that carries the batch.

    Attributes:
        name: the parameter name in the model's ``forward`` signature. Callers may pass it by position
            or keyword; xcfg binds both through the signature.
        dim: the batch dimension of the tensor (0 for every diffusers model so far).
        key: for a dict-valued argument, the entry that carries the batch, for example
            ``BatchInput(name="joint_attention_kwargs", key="ip_adapter_image_embeds")``. The rest of
            the dict is shared by every rank.

        per_sample: the value is a Python list with one entry per sample (Z-Image's ``x`` and
            ``cap_feats``): the list itself is split, its tensors are not cut. The model's output is then
            a list with one entry per sample as well.

    A value may be a tensor, a list or tuple of tensors (each split the same way), or ``None`` (left
    alone). A tensor whose size at ``dim`` is 1 while the batch is larger is treated as broadcast and
    passed whole to every rank; any other size that is not the batch raises :class:`xcfg.ShapeError`.

    Example:
        >>> from xcfg import BatchInput
        >>> BatchInput(name="hidden_states")
        BatchInput(name='hidden_states', dim=0, key=None, per_sample=False)
    """

    name: str = Field(pattern=r"^[A-Za-z_]\w*$")
    dim: int = Field(default=0, ge=0)
    key: str | None = None
    per_sample: bool = False

    @property
    def label(self) -> str:
        """How error messages name this input, ``name`` or ``name['key']``."""
        return self.name if self.key is None else f"{self.name}[{self.key!r}]"


class ModelSpec(_ClassSpec):
    """What xcfg needs to know about one denoiser class. Frozen; validated on construction.

    Attributes:
        model: the class, or a lazy import path ``"package.module:ClassName"`` that is imported only
            when a pipeline is looked up (so registering a spec never imports the model). Subclasses
            of the class match too.
        batch_inputs: the forward arguments that carry the CFG batch. Strings are shorthand for
            ``BatchInput(name=...)``. Required for :attr:`CFGStyle.BATCHED`; anything not listed is
            passed unchanged to every rank.
        style: how the pipeline evaluates the CFG branches (:class:`CFGStyle`).
        no_cfg_reason: why CFG parallelism is impossible for this model; shown to the user when
            ``parallelize`` refuses it. Required when ``style`` is :attr:`CFGStyle.NONE`, and with
            ``guidance_distilled``.
        guidance_distilled: for a :attr:`CFGStyle.TWO_CALL` model that some checkpoints distil
            (Flux.1-dev, HunyuanVideo): returns whether this instance is guidance-distilled, for
            example from ``module.config.guidance_embeds``. Such an instance has an uncond call only
            when the pipeline runs true CFG (a negative prompt and ``true_cfg_scale > 1``), so
            ``parallelize`` refuses it with ``no_cfg_reason`` unless called with ``true_cfg=True``.
        refuse: ``refuse(pipe, module)`` returns why xcfg cannot split this pipeline's calls correctly, or
            ``None`` when it can. ``pipe`` is the pipeline (``None`` for a bare denoiser). For what only
            the pipeline shows: a step-distilled checkpoint flagged on the pipeline (FLUX.2 Klein's
            ``is_distilled``), or a pipeline whose uncond call gets other latents (Cosmos Video2World).
            ``parallelize`` raises :class:`xcfg.UnsupportedPipelineError` with the reason.
        context_parallel: how to split this model's sequence across ranks (a
            :class:`xcfg.ContextParallelSpec`), for a model diffusers ships no ``_cp_plan`` for, or to
            refuse diffusers' own plan where it does not compute the model correctly (the spec's plan then
            returns the class's ``_cp_plan``); ``None`` uses diffusers' own plan, if any.

    Example:
        >>> from xcfg import ModelSpec
        >>> spec = ModelSpec(
        ...     model="diffusers:CogVideoXTransformer3DModel",
        ...     batch_inputs=["hidden_states", "encoder_hidden_states", "timestep", "ofs"],
        ... )
        >>> [i.name for i in spec.batch_inputs]
        ['hidden_states', 'encoder_hidden_states', 'timestep', 'ofs']
        >>> spec.name
        'CogVideoXTransformer3DModel'
    """

    batch_inputs: tuple[BatchInput, ...] = ()
    style: CFGStyle = CFGStyle.BATCHED
    no_cfg_reason: str | None = None
    guidance_distilled: Callable[[torch.nn.Module], bool] | None = None
    refuse: Callable[[Any, torch.nn.Module], str | None] | None = None
    context_parallel: ContextParallelSpec | None = None

    @field_validator("batch_inputs", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, (str, dict, BatchInput)):
            value = [value]
        return tuple({"name": v} if isinstance(v, str) else v for v in value)

    @model_validator(mode="after")
    def _check_style(self) -> ModelSpec:
        labels = [i.label for i in self.batch_inputs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"batch_inputs lists an argument twice: {labels}")
        if self.style is CFGStyle.BATCHED and not self.batch_inputs:
            raise ValueError("a 'batched' spec needs batch_inputs: the forward arguments that carry the batch")
        if self.style is CFGStyle.NONE and not (self.no_cfg_reason or "").strip():
            raise ValueError("a spec with style 'none' needs no_cfg_reason: say why CFG parallelism is impossible")
        if self.guidance_distilled is not None:
            if self.style is not CFGStyle.TWO_CALL:
                raise ValueError("guidance_distilled is only for style 'two_call' (true CFG makes two calls per step)")
            if not (self.no_cfg_reason or "").strip():
                raise ValueError("a spec with guidance_distilled needs no_cfg_reason: say why a distilled instance has no CFG")
        elif self.style is not CFGStyle.NONE and self.no_cfg_reason is not None:
            raise ValueError("no_cfg_reason is only for style 'none' or with guidance_distilled")
        return self


class VAESpec(_ClassSpec):
    """What xcfg needs to split one VAE class's tiled decode across the CFG ranks. Frozen; validated.

    A plugin registers it from its ``register_models`` hook, next to its :class:`xcfg.ModelSpec`.
    :func:`xcfg.parallelize` finds the spec of ``pipe.vae``'s class (or its nearest base class with one)
    and, when the CFG group has several ranks, spreads the tiles of every tiled decode across them.

    Attributes:
        model: the VAE class, or a lazy import path ``"package.module:ClassName"``. Subclasses match
            too, unless they override ``tiled_decode`` (those decode as before, on every rank).
        tiled_decode: ``tiled_decode(vae, z, pmap) -> Tensor | None``: the family's tiled decode of the
            latent ``z``, the same tiles in the same way as ``vae.tiled_decode(z).sample``, with the
            decoding of the tiles done through ``pmap`` (a :class:`xcfg.PMap`) and the blending after it.
            It returns the decoded sample, or ``None`` where ``pmap`` returned ``None``. The VAE's own
            ``tiled_decode`` arguments other than the latent and ``return_dict`` are passed on by name
            (LTX's ``temb``, LTX-2's ``temb`` and ``causal``), their defaults filled in.

    Example:
        >>> import torch, xcfg
        >>> def tiled_decode(vae, z, pmap):
        ...     tiles = list(z.split(4, dim=-1))
        ...     decoded = pmap(vae.decoder, tiles)
        ...     return None if decoded is None else torch.cat(decoded, dim=-1)
        >>> spec = xcfg.VAESpec(model="diffusers:AutoencoderKL", tiled_decode=tiled_decode)
        >>> spec.name
        'AutoencoderKL'
    """

    tiled_decode: Callable[..., Any]


def _describe(err: ValidationError, kind: str, subject: Any) -> str:
    where = f" for {subject!r}" if subject is not None else ""
    lines = [f"malformed xcfg {kind}{where}:"]
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "(spec)"
        lines.append(f"  field '{field}': {problem['msg']}")
    return "\n".join(lines)


class Example(_Spec):
    """A runnable example pipeline a plugin offers: the CLI, the tests and the benchmarks build it.

    ``build`` makes the pipeline from configs with random weights (never a download) and the keyword
    arguments to call it with, including precomputed random prompt embeddings.

    Attributes:
        name: how users pick it, for example ``xcfg run --example cogvideox``.
        summary: one line for listings.
        build: ``build(size=..., device=..., dtype=...)`` returning an :class:`ExampleRun`.
        sizes: the sizes ``build`` accepts; ``"tiny"`` (CPU-friendly) is required, ``"full"`` is the
            published model size the benchmarks use.
        default: the example ``xcfg run`` uses when none is named.

    Example:
        >>> import xcfg
        >>> example = xcfg.default_registry().example("cogvideox")
        >>> run = example.build(size="tiny")
        >>> type(run.pipe).__name__
        'CogVideoXPipeline'
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    summary: str
    build: Callable[..., Any]
    sizes: tuple[str, ...] = ("tiny",)
    default: bool = False

    @model_validator(mode="after")
    def _check_sizes(self) -> Example:
        if "tiny" not in self.sizes:
            raise ValueError("sizes must include 'tiny': a CPU-sized build that tests and the CLI use")
        return self


@dataclass
class ExampleRun:
    """A built example: the pipeline and how to call it.

    Attributes:
        pipe: the diffusers pipeline, on the requested device and dtype.
        kwargs: keyword arguments for ``pipe(**kwargs)`` (prompt embeddings, size, steps, guidance).
        description: what was built, for reports (for example ``"CogVideoX-5B, 49x480x720"``).
        output: the attribute of the pipeline's output that holds the result (``"frames"``, ``"images"``).

    Example:
        >>> import xcfg
        >>> run = xcfg.ExampleRun(pipe=None, kwargs={"num_inference_steps": 4}, description="a tiny model")
        >>> run.output    # the result is getattr(run.pipe(**run.kwargs), run.output)
        'images'
    """

    pipe: Any
    kwargs: dict[str, Any]
    description: str
    output: str = "images"
