"""Helpers the example builders share: device/dtype defaults and seeded random prompt embeddings."""

from __future__ import annotations

from typing import Any

import torch

SIZES = ("tiny", "small", "full")


def resolve(size: str, device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    """Check ``size`` and pick defaults: the CPU in float32 for tiny builds, CUDA in bfloat16 for full ones."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if device is None:
        device = "cuda" if size == "full" and torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.bfloat16 if size == "full" else torch.float32
    return torch.device(device), dtype


def embeddings(seed: int, device: torch.device, dtype: torch.dtype, **shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes, the same on every rank for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator).to(device, dtype) for name, shape in shapes.items()}


def build_on(device: torch.device, dtype: torch.dtype, make: Any, seed: int = 0) -> Any:
    """Call ``make()`` with ``device`` and ``dtype`` as defaults and a fixed seed, so every rank builds the
    same random weights, directly on the device (fast for full sizes), in eval mode as ``from_pretrained``
    leaves them (dropout off). The caller's RNG state is kept."""
    previous = torch.get_default_dtype()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with device:
                built = make()
        finally:
            torch.set_default_dtype(previous)
    for component in getattr(built, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return built
