"""Helpers the example builders share: device/dtype defaults and seeded random prompt embeddings."""

from __future__ import annotations

from typing import Any

import torch

SIZES = ("tiny", "small", "full")

# The FLUX.1 VAE (black-forest-labs/FLUX.1-dev vae/config.json, as Alpha-VLLM/Lumina-Image-2.0's vae/config.json copies
# it): 16 latent channels, 8x downsampling; the full examples of the FLUX.1-derived models decode with it
FLUX1_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", latent_channels=16, norm_num_groups=32,
    sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=True, force_upcast=True,
)


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


def call_kwargs(config: dict[str, Any], seed: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """An example's call arguments: ``config["call"]`` with random prompt and negative prompt embeddings of
    ``config["text"]``'s (length, width), seeded alike on every rank."""
    length, width = config["text"]
    shape = (1, length, width)
    return {**config["call"], **embeddings(seed + 1, device, dtype, prompt_embeds=shape, negative_prompt_embeds=shape)}


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
    for name, component in getattr(built, "components", {}).items():
        if isinstance(component, torch.nn.Module):
            component.eval()
            _keep_in_fp32(component)
        elif hasattr(component, "set_timesteps") and hasattr(component, "from_config"):
            # a scheduler built under the device context holds its tables there (an SDXL Euler scheduler on
            # CUDA then fails in set_timesteps' numpy); from_pretrained builds them on the CPU: do the same
            setattr(built, name, type(component).from_config(component.config))
    return built


def _keep_in_fp32(module: torch.nn.Module) -> None:
    """Put the parameters a diffusers model keeps in float32 (``_keep_in_fp32_modules``: Wan's time embedder,
    Kandinsky 5's modulations, ...) back in float32, as ``from_pretrained(torch_dtype=...)`` does: the model
    casts their inputs to float32, so a bf16 build fails at the first step without it."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, parameter in module.named_parameters():
        if parameter.is_floating_point() and parameter.dtype != torch.float32 and set(keep) & set(name.split(".")):
            parameter.data = parameter.data.float()


def randomize_zero_weights(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> list[str]:
    """Give small random values (``scale`` x normal, seeded alike on every rank) to the parameters a constructor
    leaves at zero (adaLN-zero modulations, final projections, Mochi's ``pos_frequencies``), so that a tiny
    example's output depends on every input and a wrong split shows, and no benchmark times zeros. Returns
    the names of the parameters it changed."""
    generator = torch.Generator().manual_seed(seed + 5)
    changed = []
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.is_floating_point() and not parameter.any():
                noise = torch.randn(parameter.shape, generator=generator) * scale
                parameter.copy_(noise.to(parameter.device, parameter.dtype))
                changed.append(name)
    return changed


def decode_spatial_tiles(
    vae: Any, z: torch.Tensor, pmap: Any, decode: Any, *, patch: int = 1
) -> torch.Tensor | None:
    """The spatial tiled decode the video VAEs of diffusers share (Wan, HunyuanVideo, LTX, LTX-2), with
    the tiles decoded through ``pmap``: the latent (B, C, F, H, W) cut into overlapping tiles of
    ``vae.tile_sample_min_*`` pixels, ``vae.tile_sample_stride_*`` pixels apart (both divided by the
    spatial compression in latent space), each tile decoded whole by ``decode(tile)``, spread by area;
    then blended, cropped to the sample size and returned (``None`` where ``pmap`` returned ``None``).
    ``patch``: the pixels a VAE packs into its channels per side (Wan 2.2 TI2V: 2), which divides the
    decoded tile sizes."""
    height, width = z.shape[-2:]
    ratio = vae.spatial_compression_ratio
    tile = (vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio)
    step = (vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio)
    size = (vae.tile_sample_min_height // patch, vae.tile_sample_min_width // patch)
    keep = (vae.tile_sample_stride_height // patch, vae.tile_sample_stride_width // patch)
    sample = (height * ratio // patch, width * ratio // patch)
    lefts = range(0, width, step[1])
    tiles = [z[..., i : i + tile[0], j : j + tile[1]] for i in range(0, height, step[0]) for j in lefts]
    decoded = pmap(decode, tiles, cost=[t.shape[-2] * t.shape[-1] for t in tiles])
    if decoded is None:
        return None
    blend = (size[0] - keep[0], size[1] - keep[1])
    return stitch_tiles(vae, decoded, len(lefts), blend, keep)[..., : sample[0], : sample[1]]


def stitch_tiles(
    vae: Any, tiles: list[torch.Tensor], columns: int, blend: tuple[int, int], keep: tuple[int, int]
) -> torch.Tensor:
    """The end of a diffusers tiled decode, shared by the VAE sections: blend row-major tiles with their
    upper and left neighbours (already blended, as diffusers does), crop each to ``keep``, concatenate."""
    grid = [tiles[start : start + columns] for start in range(0, len(tiles), columns)]
    for r, row in enumerate(grid):
        for c in range(len(row)):
            if r:
                row[c] = vae.blend_v(grid[r - 1][c], row[c], blend[0])
            if c:
                row[c] = vae.blend_h(row[c - 1], row[c], blend[1])
    return torch.cat([torch.cat([t[..., : keep[0], : keep[1]] for t in row], dim=-1) for row in grid], dim=-2)


# -- context parallel --------------------------------------------------------------------------------


class ProcessorSwap:
    """Gives every attention module of a denoiser whose processor class is named ``old`` an instance of
    ``new`` (a processor that goes through diffusers' ``dispatch_attention_fn``); calling it returns the
    undo. :meth:`refuse` says, before anything is changed, why a model's processors cannot be swapped."""

    def __init__(self, old: str, new: type) -> None:
        self.old, self.new = old, new

    def refuse(self, module: torch.nn.Module) -> str | None:
        for name, m in module.named_modules():
            processor = getattr(m, "processor", None)
            if processor is not None and type(processor).__name__ != self.old:
                return (
                    f"{name} of {type(module).__name__} uses the attention processor {type(processor).__name__}; "
                    f"context parallelism replaces {self.old} only. Restore it (model.set_attn_processor("
                    f"{self.old}())) before parallelize()"
                )
        return None

    def __call__(self, module: torch.nn.Module) -> Any:
        swapped = [(m, m.processor) for m in module.modules() if getattr(m, "processor", None) is not None]
        for m, _ in swapped:
            m.processor = self.new()

        def undo() -> None:
            for m, processor in swapped:
                m.processor = processor

        return undo
