"""CFG denoiser classes of the installed diffusers that the census has no tiny build for, and why."""

UNBUILT: dict[str, str] = {}
