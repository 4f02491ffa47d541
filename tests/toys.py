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


class ToyTwoCallDenoiser(ToyDenoiser):
    """The same model, used by a pipeline that calls it twice per step (cond, then uncond)."""


TWO_CALL_SPEC = xcfg.ModelSpec(model=ToyTwoCallDenoiser, style="two_call")


class TwoCallPlugin:
    @xcfg.hookimpl
    def register_models(self, register):
        register(TWO_CALL_SPEC)


class ToyTwoCallPipe:
    """A two-call CFG loop shaped like Wan's and Qwen-Image's (a fresh timestep tensor per call)."""

    def __init__(self, transformer):
        self.transformer = transformer

    def __call__(self, latents, prompt_embeds, negative_prompt_embeds, steps=4, guidance_scale=3.0, generator=None):
        for i in range(steps):
            t = torch.full((latents.shape[0],), float(steps - i))
            cond = self.transformer(hidden_states=latents, encoder_hidden_states=prompt_embeds, timestep=t / 10,
                                    return_dict=False)[0]
            if guidance_scale > 1:
                uncond = self.transformer(hidden_states=latents, encoder_hidden_states=negative_prompt_embeds,
                                          timestep=t / 10, return_dict=False)[0]
                cond = uncond + guidance_scale * (cond - uncond)
            latents = latents - 0.1 * cond
        return latents


def two_call_model(seed: int = 0) -> ToyTwoCallDenoiser:
    torch.manual_seed(seed)
    return ToyTwoCallDenoiser()
