"""Small models for tests: every way a caller may pass the batch (positional, keyword, list, dict entry)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

import xcfg


class ToyDenoiser(torch.nn.Module):
    """out = (hidden_states @ W + mean(encoder_hidden_states) + timestep + residuals + extra) * scale."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.batches: list[int] = []

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, residuals=None,
                attention_kwargs=None, scale=1.0, return_dict=True):
        self.batches.append(hidden_states.shape[0])
        out = self.proj(hidden_states)
        if encoder_hidden_states is not None:
            out = out + encoder_hidden_states.mean(dim=1, keepdim=True)
        if timestep is not None:
            out = out + timestep.view(-1, 1, 1)
        for residual in residuals or []:
            out = out + residual
        if attention_kwargs and "extra" in attention_kwargs:
            out = out + attention_kwargs["extra"].view(-1, 1, 1)
        out = out * scale
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


TOY_SPEC = xcfg.ModelSpec(
    model=ToyDenoiser,
    batch_inputs=[
        "hidden_states",
        "encoder_hidden_states",
        "timestep",
        "residuals",
        {"name": "attention_kwargs", "key": "extra"},
    ],
)


class ToyPlugin:
    @xcfg.hookimpl
    def register_models(self, register):
        register(TOY_SPEC)


class UnknownDenoiser(torch.nn.Module):
    def forward(self, hidden_states):
        return hidden_states


@dataclass
class ToyPipe:
    """The smallest thing parallelize treats as a pipeline: an object with a `transformer`."""

    transformer: torch.nn.Module

    def __call__(self, hidden_states, encoder_hidden_states, timestep, generator=None):
        noise = torch.randn(hidden_states.shape, generator=generator)
        return self.transformer(hidden_states + noise, encoder_hidden_states, timestep, return_dict=False)[0]


def toy_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 3, 4, generator=g),
        "encoder_hidden_states": torch.randn(batch, 5, 4, generator=g),
        "timestep": torch.randn(batch, generator=g),
    }


def toy_model(seed: int = 0) -> ToyDenoiser:
    torch.manual_seed(seed)
    return ToyDenoiser()
