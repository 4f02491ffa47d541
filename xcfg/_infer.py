"""The inferred style: a denoiser no plugin names is watched, its CFG style inferred, and verified before trusted.

- **Batched**: a call whose latent batch (the first forward argument: a tensor's dim 0, or the length of
  a list of per-sample tensors) divides by the group size. Every argument that carries that batch is
  found: tensors, dict entries (UNet ``added_cond_kwargs``), lists and tuples (ControlNet residuals,
  IP-Adapter embeddings), per-sample lists (Z-Image). The first split call of each shape is also
  computed whole on every rank and compared; only a match (every rank agreeing) makes later calls of
  that shape split. A forward that fails on the split inputs, an output without this rank's share, or
  a mismatch: the model runs whole from then on, with one warning that names the class and what a
  plugin would declare.
- **Two-call**: any other call goes to the two-call style, which pairs the calls of a step (by the
  pipeline's ``cache_context`` names, or equal latents and timestep) and predicts the uncond call from
  the previous step. The first predicted call it consumes is also computed for real and compared:
  state no argument shows (GLM-Image flips its KV-cache mode between the two calls) makes the
  prediction differ, and predicting stops, with a warning.

:meth:`Inferred.inferred_spec` returns what was verified as the :class:`xcfg.ModelSpec` a plugin would
register, and :func:`spec_source` prints it as plugin code.
"""

from __future__ import annotations

from typing import Any

import torch

from ._binding import Binding
from ._gather import call_key, close, gather_output
from ._group import CFGGroup
from ._notices import warn_once
from ._protocol import CallPlan
from ._spec import BatchInput, CFGStyle, ModelSpec
from ._styles import Call, Style, TwoCall, _tolerance
from ._tree import tree_leaves

__all__ = ["Inferred", "infer_batch_inputs", "spec_source"]


def _latent_batch(call: Call, names: tuple[str, ...]) -> tuple[int | None, bool]:
    """The batch of the call's latent (its first forward argument) and whether it is a per-sample list."""
    if not names or names[0] not in call.named:
        return None, False
    latent = call.named[names[0]]
    if isinstance(latent, torch.Tensor) and latent.dim() > 0:
        return int(latent.shape[0]), False
    if isinstance(latent, (list, tuple)) and latent and all(isinstance(t, torch.Tensor) for t in latent):
        return len(latent), True
    return None, False


def infer_batch_inputs(named: dict[str, Any], batch: int, per_sample: bool) -> tuple[BatchInput, ...]:
    """Every argument of a call that carries a batch of ``batch`` samples, as batch inputs.

    Example:
        >>> import torch
        >>> from xcfg._infer import infer_batch_inputs
        >>> named = {"sample": torch.ones(2, 4), "timestep": torch.tensor(3.0),
        ...          "added_cond_kwargs": {"time_ids": torch.ones(2, 6), "scale": 1.0}}
        >>> [i.label for i in infer_batch_inputs(named, 2, False)]
        ['sample', "added_cond_kwargs['time_ids']"]
    """
    found: list[BatchInput] = []

    def carries(value: Any) -> bool:
        return any(
            isinstance(leaf, torch.Tensor) and leaf.dim() > 0 and leaf.shape[0] == batch
            for _, leaf in tree_leaves(value)
        )

    for name, value in named.items():
        if per_sample and isinstance(value, list) and len(value) == batch and all(
            isinstance(v, torch.Tensor) for v in value
        ):
            found.append(BatchInput(name=name, per_sample=True))
        elif isinstance(value, dict) and not isinstance(value, torch.Tensor):
            found.extend(BatchInput(name=name, key=str(k)) for k, v in value.items() if isinstance(k, str) and carries(v))
        elif carries(value):
            found.append(BatchInput(name=name))
    return tuple(found)


class Inferred(Style):
    """The style of a model no plugin names: batched or two-call, inferred per call and verified first."""

    style = CFGStyle.TWO_CALL  # what the placeholder spec says; the real decision is per call

    def __init__(self, spec: ModelSpec, model_class: type, group: CFGGroup, shared: dict[str, Any]) -> None:
        super().__init__(spec, model_class, group, shared)
        self.model_class = model_class
        self.two_call = TwoCall(spec, model_class, group, shared, verify=True)
        self.two_call.on_mismatch = self._two_call_failed
        self.two_call.stats = self.stats  # one count of what this denoiser's calls did
        self.verdicts: dict[tuple[Any, ...], bool] = {}
        self.batched_failed: str | None = None
        self.verified_inputs: tuple[BatchInput, ...] | None = None
        self._bindings: dict[tuple[Any, ...], tuple[tuple[BatchInput, ...], Binding]] = {}
        self._delegated = False

    # the two-call part shares this style's stats and agreement round
    def start_run(self, run: int) -> None:
        super().start_run(run)
        self.two_call.start_run(run)

    def plan(self, call: Call) -> CallPlan:
        self.two_call.agree = self.agree
        group = self.group
        batch, per_sample = _latent_batch(call, self.binding.names)
        batched = group.size > 1 and batch is not None and batch >= group.size and batch % group.size == 0
        if not batched or call.whole or self.batched_failed is not None:
            self._delegated = True
            return self.two_call.plan(call)
        self._delegated = False
        self.stats.count("calls")
        key = call_key(call.named)
        verdict = self.verdicts.get(key)
        if verdict is False:
            return CallPlan(compute=call.run_whole, value=batch)
        if key not in self._bindings:  # inferred once per call shape, not at every step
            inputs = infer_batch_inputs(call.named, batch, per_sample)
            self._bindings[key] = (inputs, Binding(inputs, self.model_class))
        inputs, binding = self._bindings[key]
        args, kwargs = binding.split(call.args, call.kwargs, batch, group.rank, group.size)
        share = batch // group.size
        if verdict:
            self.stats.count("split")
            return CallPlan(
                compute=lambda: call.forward(*args, **kwargs),
                collect=lambda output: gather_output(output, share, group, per_sample=per_sample),
                value=batch,
                key=key,
            )

        def compute() -> tuple[Any, Any, BaseException | None]:
            whole = call.run_whole()
            try:
                return whole, call.forward(*args, **kwargs), None
            except Exception as err:  # the split inputs do not fit the model: not a failure of the call
                return whole, None, err

        def collect(outcome: tuple[Any, Any, BaseException | None]) -> tuple[Any, list[Any]]:
            whole, part, error = outcome
            if not self.agree(error is None):
                return self._batched_failed(key, f"its forward failed on the split inputs ({_brief(error)})", whole)
            try:
                gathered, layout = gather_output(part, share, group, per_sample=per_sample)
            except Exception as err:  # the same on every rank: the output shapes are the same everywhere
                return self._batched_failed(key, _brief(err), whole)
            if not self.agree(close(gathered, whole, _tolerance(whole))):
                return self._batched_failed(key, "the split result differed from the whole call's", whole)
            self.verdicts[key] = True
            self.verified_inputs = inputs
            self.stats.count("split")
            return whole, layout

        return CallPlan(compute=compute, collect=collect, value=batch, key=key)

    def finish(self, call: Call, plan: CallPlan, result: Any) -> Any:
        if self._delegated:
            return self.two_call.finish(call, plan, result)
        return result

    # -- verdicts ------------------------------------------------------------------------------------

    def _batched_failed(self, key: tuple[Any, ...], reason: str, whole: Any) -> tuple[Any, list[Any]]:
        self.verdicts[key] = False
        self.batched_failed = reason
        self._warn(f"splitting its batch could not be verified: {reason}", "batched")
        return whole, []

    def _two_call_failed(self, reason: str) -> None:
        self._warn(reason, "two_call")

    def _warn(self, reason: str, style: str) -> None:
        name = f"{self.model_class.__module__}.{self.model_class.__qualname__}"
        declare = (
            "a plugin declaring the forward arguments that carry the batch (batch_inputs)"
            if style == "batched"
            else "a plugin that handles the state its calls depend on"
        )
        warn_once(
            f"xcfg: no plugin names {name}, and xcfg inferred a {style.replace('_', '-')} CFG style for it, but "
            f"{reason}. Its calls run whole on every rank (the same result, no speedup). To split it, write "
            f"{declare}; see 'Writing a model plugin' in the xcfg documentation."
        )

    # -- what was learnt -----------------------------------------------------------------------------

    def inferred_spec(self) -> ModelSpec | None:
        """The spec a plugin would register for what was verified so far, or ``None``."""
        model = f"{self.model_class.__module__}:{self.model_class.__qualname__}"
        if self.verified_inputs is not None:
            return ModelSpec(model=model, batch_inputs=self.verified_inputs)
        if self.two_call.trusted:
            return ModelSpec(model=model, style="two_call")
        return None


def spec_source(spec: ModelSpec) -> str:
    """A plugin module's source that registers ``spec``: what :meth:`xcfg.Parallelized.plugin_source` prints.

    Example:
        >>> import xcfg
        >>> from xcfg._infer import spec_source
        >>> print(spec_source(xcfg.ModelSpec(model="my_pkg:MyModel", batch_inputs=["sample"])))
        import xcfg
        <BLANKLINE>
        SPEC = xcfg.ModelSpec(
            model="my_pkg:MyModel",
            batch_inputs=[
                xcfg.BatchInput(name="sample"),
            ],
        )
        <BLANKLINE>
        <BLANKLINE>
        @xcfg.hookimpl
        def register_models(register):
            register(SPEC)
    """
    lines = ["import xcfg", "", "SPEC = xcfg.ModelSpec(", f'    model="{spec.path}",']
    if spec.style is CFGStyle.TWO_CALL:
        lines.append('    style="two_call",')
    if spec.batch_inputs:
        lines.append("    batch_inputs=[")
        for item in spec.batch_inputs:
            extra = "".join(
                [
                    f", dim={item.dim}" if item.dim else "",
                    f', key="{item.key}"' if item.key is not None else "",
                    ", per_sample=True" if item.per_sample else "",
                ]
            )
            lines.append(f'        xcfg.BatchInput(name="{item.name}"{extra}),')
        lines.append("    ],")
    lines += [")", "", "", "@xcfg.hookimpl", "def register_models(register):", "    register(SPEC)"]
    return "\n".join(lines)


def _brief(error: BaseException | None) -> str:
    text = f"{type(error).__name__}: {error}" if error is not None else "no error"
    return text if len(text) <= 300 else text[:300] + " ..."

