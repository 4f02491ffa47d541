#!/usr/bin/env bash
# One benchmark device call on a lent 2-GPU machine (see benchmarks/README.md):
#
#   bash benchmarks/gpu.sh [run.py options] [MODEL ...]     e.g.  bash benchmarks/gpu.sh cogvideox sd3.5-large sd3
#
# From the repository root, with `.whl` carried (../shared/tools/device-wheels.sh fills it once): installs the
# wheels the machine lacks, installs the project, and runs benchmarks/run.py on the models named, all under one
# time budget (XCFG_BENCH_BUDGET seconds, default 570: the call's limit is 600). Writes results.json, results.md,
# speedup.png, README.md and log.txt into $OUT (benchmarks/results without it) and prints the table last.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
budget="${XCFG_BENCH_BUDGET:-570}"

# NVLink multicast stays off on the lent machines (KINDS.md): keep these set for every process started here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export XCFG_BENCH_LAUNCHER="bash benchmarks/gpu.sh $*"

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# Entry-point metadata for the plugins. It needs setuptools >= 77 there (pyproject's SPDX license string); when it
# fails, run.py registers the built-in xcfg_plugins modules itself, so the run goes on either way.
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/xcfg-editable.log 2>&1; then
  tail -n 5 /tmp/xcfg-editable.log
  echo "gpu.sh: the editable install failed; run.py registers the built-in plugins itself"
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, diffusers; print(f"gpu.sh: torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.cuda.device_count()} GPUs")' \
  || exit 1

python3 benchmarks/run.py --out "$OUT" --time-limit "$((budget - SECONDS))" "$@" 2>&1 | tee "$OUT/log.txt"
