#!/usr/bin/env bash
# Everything that needs a GPU, in one call (the lent machine has 15 minutes in all):
#   1. the test suite's `gpu` tests (tests/test_gpu.py) on the CoverWorld models;
#   2. benchmarks/gpu_bench.py: an SD1.5-sized UNet at 512 px — rollout vs bare diffusers images/s, learner DDPO
#      step time and bf16 MFU, weight-sync ms — one table.
# On the device machine (its python3 has CUDA torch + transformers, no diffusers/pydantic):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "artifacts/coverworld/models/sd",
#       "artifacts/coverworld/models/mllm"])
# where .whl holds wheels for what is missing there (diffusers 0.42.1, pydantic and its parts; see RESULTS.md).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
echo "== gpu tests"
timeout 300 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "== gpu benchmark"
timeout 400 python3 benchmarks/gpu_bench.py "$@" 2>&1 | grep -v "Loading\|Writing model" | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, benchmark rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
