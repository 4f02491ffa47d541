"""generate.py: text-to-video with CogVideoX, its CFG batch split across the ranks of torchrun.

    torchrun --nproc-per-node 2 generate.py /models/CogVideoX-5b    # 2 GPUs: each computes half of every step
    python generate.py /models/CogVideoX-5b                         # 1 GPU: the same script, unchanged

The argument is a local pipeline folder (or a hub id already in your cache).
"""

import sys

import torch
import torch.distributed as dist
from diffusers import CogVideoXPipeline
from diffusers.utils import export_to_video

import xcfg

model = sys.argv[1] if len(sys.argv) > 1 else "THUDM/CogVideoX-5b"

device = xcfg.init_distributed()  # under torchrun: NCCL, and cuda:LOCAL_RANK for this rank
pipe = CogVideoXPipeline.from_pretrained(model, torch_dtype=torch.bfloat16).to(device)
xcfg.parallelize(pipe)  # the one line: each rank computes half of the [uncond, cond] batch

video = pipe(
    "a panda playing a guitar in a bamboo forest",
    guidance_scale=6.0,
    num_inference_steps=50,
    generator=torch.Generator().manual_seed(0),
).frames[0]

if not dist.is_initialized() or dist.get_rank() == 0:  # every rank holds the same video; one writes it
    export_to_video(video, "panda.mp4", fps=8)
if dist.is_initialized():
    dist.destroy_process_group()
