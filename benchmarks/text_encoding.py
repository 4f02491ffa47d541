"""What text encoding costs, on every rank: T5-XXL (the encoder of CogVideoX, SD3 and Mochi) at full size.

diffusers pipelines encode the prompt and the negative prompt inside ``__call__`` (``encode_prompt``),
so with CFG parallelism every rank encodes both; splitting them would mean patching each pipeline.
This measures that repeated cost so the benchmark table can state it: random bf16 weights built from
T5-v1.1-XXL's published config, the sequence lengths the pipelines use, median of 20 calls.

    python benchmarks/text_encoding.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

# google/t5-v1_1-xxl encoder, as the pipelines load it (T5EncoderModel).
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
              vocab_size=32128, relative_attention_num_buckets=32, is_encoder_decoder=False, use_cache=False)
SEQUENCES = {"CogVideoX": 226, "Mochi": 256, "SD3": 256}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    from transformers import T5Config, T5EncoderModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with device:
        encoder = T5EncoderModel(T5Config(**T5_XXL)).eval()
    torch.set_default_dtype(previous)
    results = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "model": "T5-v1.1-XXL encoder, random bf16 weights", "per_pipeline_call": {}}
    for name, length in SEQUENCES.items():
        ids = torch.randint(0, 32128, (1, length), device=device)
        times = []
        with torch.no_grad():
            for i in range(25):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                encoder(input_ids=ids)  # the prompt
                encoder(input_ids=ids)  # the negative prompt
                end.record()
                torch.cuda.synchronize()
                if i >= 5:
                    times.append(start.elapsed_time(end) / 1000)
        results["per_pipeline_call"][name] = {"tokens": length, "seconds_median": statistics.median(times)}
        print(f"text encoding, {name} ({length} tokens, prompt + negative): {statistics.median(times) * 1000:.1f} ms "
              f"on every rank ({results['card']})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "text_encoding.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
