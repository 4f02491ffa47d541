"""CFG denoiser classes of the installed diffusers that the census has no tiny build for, and why."""

UNBUILT: dict[str, str] = {
    "OmniGenTransformer2DModel": "its processor needs torchvision, which the CPU test environment does not install",
    "JoyImageEditPlusTransformer3DModel": "its pipeline needs a Qwen-VL processor (vocab files) to build",
    "DreamLiteUNetModel": "its pipeline needs a Qwen-VL processor (vocab files); the class subclasses "
    "UNet2DConditionModel, which the unet plugin covers",
    "SanaWMTransformer3DModel": "camera inputs and the LTX-2 VAE: not built yet",
}
