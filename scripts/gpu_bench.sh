#!/usr/bin/env bash
# GPU figures of issue 5 (docs/speed.md): the zephyr-7b shape (Mistral-7B, random weights built on the GPU, no
# download) on one H100: our engine in bf16 at batch 8 x 512 tokens, then the reference engine in fp32 at batch 1.
# About 5 minutes of GPU time; each engine has its own time limit, so one failing leaves the other's numbers.
#
# Once, on the development machine (the image's transformers 5.17 predates the API the engine is tested with):
#   .venv/bin/pip download --no-deps --only-binary=:all: -d build/wheels transformers==5.24.0 peft==0.21.2
# Then with the device tool, from the repo root:
#   run(command="bash scripts/gpu_bench.sh", carry=["build/wheels"], timeout_s=600)
# Output: gpu_bench.log, elm.json, reference.json in $OUT (the device tool's folder) or runs/gpu-bench/.
# SMOKE=1 PYTHON=.venv/bin/python bash scripts/gpu_bench.sh   runs the same steps on a tiny random model on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-runs/gpu-bench}
mkdir -p "$DEST"
exec > >(tee "$DEST/gpu_bench.log") 2>&1

PY=${PYTHON:-python3}
SHAPE=(--random-init mistral-7b --config reference-code --text-tokens 512 train.batch_size=8 train.grad_accum=1)
OURS=(model.dtype=bfloat16 speed.autocast=true fluency.batch_size=48)
STEPS=(--warmup 1 --steps 5)
RETRY=(--warmup 1 --steps 3)
REF=(--reference-samples 8)
if [ "${SMOKE:-0}" = 1 ]; then
  SHAPE=(--random-init tiny --config reference-code --text-tokens 32 train.batch_size=2 train.grad_accum=1 lora.rank=4
         fluency.min_new_tokens=3 fluency.max_new_tokens=6 model.device=cpu)
  OURS=() STEPS=(--warmup 0 --steps 1) RETRY=(--warmup 0 --steps 1) REF=(--reference-samples 2)
fi

if [ "${SMOKE:-0}" != 1 ] && ls build/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    build/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

echo "== our engine: bf16, batch 8 x 512 tokens, LoRA r256 layers 4-7, 1 + 5 steps (48 texts generated in one batch)"
timeout 220 $PY -m elmerase bench "${SHAPE[@]}" "${OURS[@]}" --engine elm "${STEPS[@]}" --json "$DEST/elm.json"
if [ $? -ne 0 ]; then
  echo "== our engine again with gradient checkpointing (the run above failed, e.g. out of memory)"
  timeout 140 $PY -m elmerase bench "${SHAPE[@]}" "${OURS[@]}" speed.gradient_checkpointing=true --engine elm \
    "${RETRY[@]}" --json "$DEST/elm.json"
fi

echo "== reference engine: fp32, batch 1, 8 samples (one optimizer step)"
timeout 200 $PY -m elmerase bench "${SHAPE[@]}" --engine reference "${REF[@]}" --json "$DEST/reference.json"

echo "== both"
$PY - "$DEST" <<'EOF'
import json, sys
from pathlib import Path
from elmerase.bench import BenchResult
from elmerase.cli.bench import format_results
fields = set(BenchResult.__dataclass_fields__)
results = []
for name in ("elm", "reference"):
    path = Path(sys.argv[1]) / f"{name}.json"
    if path.exists():
        results += [BenchResult(**{k: v for k, v in r.items() if k in fields}) for r in json.loads(path.read_text())["results"]]
print(format_results(results))
EOF
