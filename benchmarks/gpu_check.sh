#!/usr/bin/env bash
# Everything that needs a GPU, in one call (the lent machine: 15 minutes of device time in all, 10 per command).
# Parts, in this order (PARTS="tests bench real trl" by default; "sd3" adds the SD3.5-Medium layout's run):
#   tests  the test suite's `gpu` tests (tests/test_gpu.py) on the CoverWorld models;
#   bench  benchmarks/gpu_bench.py: an SD1.5-sized UNet at 512 px — rollout vs bare diffusers images/s, eager and
#          compiled with CUDA graphs; learner DDPO step time and bf16 MFU, eager and regionally compiled; weight-sync
#          ms (object store path, cuda_ipc) — one table (extra arguments of this script go to it: e.g.
#          --rollout-compile off --learner-compile off to skip the ~1-3 minutes of compilation);
#   real   the real layouts, whole: benchmarks/real_layouts.py builds random-weight SD1.5 + Qwen2-VL-2B + CLIP-L
#          (+ aesthetic head, preference model, PixelRec-layout data) folders from configs, no hub; then
#          `python -m icg_rl.train` runs them (configs/gpu/sd15_qwen2vl_1gpu.yaml: DDPO, 8 images/iteration, 20 steps,
#          CFG 5, 512 px, 3 iterations, every role on the one GPU through fractional GPUs) while nvidia-smi samples
#          the device's memory;
#   trl    benchmarks/gpu_trl.py: trl 0.23.1's DDPOTrainer on the same UNet folder, batch, steps, CFG and resolution;
#          prints the one table of the real layouts (rollout / reward / learn / sync / other per iteration,
#          images/GPU/s, peak GPU memory, ours / trl images/s — goal ≥ 2×);
#   sd3    the same for the SD3.5-Medium layout (Flow-GRPO, no T5), ours only.
# Settings: TRAIN_OVERRIDES="ray.weight_sync=object_store ..." go into the generated training config; LAYOUTS (default
# /tmp/real_layouts) holds the ~10 GiB of folders. Time: each part runs under `timeout` with its own cap (seconds:
# TESTS_S 80, BENCH_S 200, BUILD_S 90, TRAIN_S 170, TRL_S 80; they add up to more than the 10-minute command with the
# unpacking) or what is left of GPU_CHECK_SECONDS (590), whichever is smaller. DRY_RUN=1 runs the real/trl/sd3 parts
# with tiny layouts on CPU (PY=.venv/bin/python PARTS="real trl" DRY_RUN=1 bash benchmarks/gpu_check.sh, here).
#
# The device machine's python3 (3.12, CUDA torch, transformers 5.17) lacks ray, diffusers, pydantic, deepspeed, trl and
# their parts: first, on the development machine, `bash benchmarks/gpu_wheels.sh` fills .whl/ (~36 MB: the list and
# why is in that script). Then, from a session with a device:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600,
#       carry=[".whl", "artifacts/coverworld/models/sd", "artifacts/coverworld/models/mllm"])
# $OUT gets gpu.txt, gpu_tests.log, gpu_bench.log, real.log (build, train, trl and failing actors' errors), real.json
# (both systems' numbers and the ratio), summary.json and metrics.jsonl of our run (sd3.json with PARTS sd3).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
PARTS=${PARTS:-tests bench real trl}
LAYOUTS=${LAYOUTS:-/tmp/real_layouts}
BUDGET=${GPU_CHECK_SECONDS:-590}
PY=${PY:-python3}
TINY="" TRL_ARGS=""
[ -n "${DRY_RUN:-}" ] && TINY=--tiny TRL_ARGS="--device cpu --precision no --warmup 0 --iterations 1"
TABLES=$(mktemp -d)  # the parts' tables, printed again at the end ($OUT takes 8 files at most)
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${DRY_RUN:-}" ]; then  # the dry run uses this checkout's .venv
  mkdir -p /tmp/site
  for bundle in .whl/*.tar.xz; do  # packages installed and packed by benchmarks/gpu_wheels.sh (ray does not fit
    [ -e "$bundle" ] && { tar -xJf "$bundle" -C /tmp/site || { echo "unpacking $bundle failed"; exit 1; }; }
  done  # the carry limit as a wheel)
  if compgen -G ".whl/*.whl" > /dev/null; then  # plain wheels, carried as they are
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } \
  | tee "$OUT/gpu.txt"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/gpu.txt"
import importlib, torch
names = ("diffusers", "transformers", "ray", "deepspeed", "trl", "datasets", "pydantic", "pyarrow", "peft")
found = []
for name in names:
    try:
        found.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as err:  # one missing package must not hide the others' versions
        found.append(f"{name} MISSING ({type(err).__name__}: {err})")
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}; " + ", ".join(found))
EOF

left() { echo $(( BUDGET - SECONDS )); }
cap() { local l; l=$(left); echo $(( $1 < l ? $1 : (l > 1 ? l : 1) )); }  # its own cap, or what is left
wants() { [[ " $PARTS " == *" $1 "* ]]; }
declare -A rc=()

if wants tests; then
  echo "== gpu tests"
  timeout "$(cap "${TESTS_S:-80}")" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_tests.log"
  rc[tests]=${PIPESTATUS[0]}
fi
if wants bench; then
  echo "== gpu benchmark"
  timeout "$(cap "${BENCH_S:-200}")" "$PY" benchmarks/gpu_bench.py "$@" 2>&1 | grep -v "Loading\|Writing model" \
    | tee "$OUT/gpu_bench.log"
  rc[bench]=${PIPESTATUS[0]}
fi

# One real layout: build, train under memory sampling, copy what comes back; $1 family, $2 folder.
real_run() {
  local family=$1 folder=$2 sampler=""
  local reuse=""  # a second call on the still-warm machine reuses the folders (REBUILD=1 builds them again)
  [ -f "$folder/build.json" ] && [ -z "${REBUILD:-}" ] && reuse=--config-only
  echo "== real layouts ($family): build $folder $reuse" | tee -a "$OUT/real.log"
  # shellcheck disable=SC2086 # TRAIN_OVERRIDES is a list of KEY=VALUE words
  timeout "$(cap "${BUILD_S:-90}")" "$PY" benchmarks/real_layouts.py --family "$family" --out "$folder" $TINY $reuse \
    ${TRAIN_OVERRIDES:-} 2>&1 | grep -v "Writing model\|Loading" | tee -a "$OUT/real.log"
  rc[build_$family]=${PIPESTATUS[0]}
  [ "${rc[build_$family]}" -eq 0 ] || return
  echo "== real layouts ($family): python -m icg_rl.train" | tee -a "$OUT/real.log"
  rm -rf "$folder/run"  # metrics.jsonl appends: an earlier call's rows must not mix in
  : > "$folder/train_memory.txt"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$folder/train_memory.txt" &
    sampler=$!
  fi
  sleep 1  # the first sample is the baseline
  timeout "$(cap "${TRAIN_S:-170}")" "$PY" -m icg_rl.train --config "$folder/train.yaml" 2>&1 | tr '\r' '\n' \
    | grep -v "it/s\]$\|s/it\]$\|Loading\|^$" | tee -a "$OUT/real.log"
  rc[train_$family]=${PIPESTATUS[0]}
  sleep 1
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
  if [ "${rc[train_$family]}" -ne 0 ]; then  # the actors' own errors: the driver shows only the first
    for err in $(grep -l "Error\|Traceback" /tmp/ray/session_latest/logs/*.err 2>/dev/null | head -4); do
      echo "-- $err" && tail -n 25 "$err"
    done 2>&1 | tee -a "$OUT/real.log"
  fi
}

if wants real; then
  real_run sd15 "$LAYOUTS"
  cp "$LAYOUTS/run/summary.json" "$LAYOUTS/run/metrics.jsonl" "$OUT/" 2>/dev/null
fi
if wants trl || wants real; then
  echo "== trl DDPOTrainer on the same UNet (and the real-layout table)" | tee -a "$OUT/real.log"
  trl_flag=$(wants trl || echo --skip-trl)
  # shellcheck disable=SC2086 # flags as words
  timeout "$(cap "${TRL_S:-80}")" "$PY" benchmarks/gpu_trl.py --config "$LAYOUTS/train.yaml" \
    --run-memory "$LAYOUTS/train_memory.txt" --json "$OUT/real.json" $trl_flag $TRL_ARGS 2>&1 \
    | grep -v "Loading\|Writing model" | tee -a "$OUT/real.log" | tee "$TABLES/sd15.txt"
  rc[table]=${PIPESTATUS[0]}
fi
if wants sd3; then
  real_run sd3 "$LAYOUTS-sd3"
  timeout "$(cap 30)" "$PY" benchmarks/gpu_trl.py --config "$LAYOUTS-sd3/train.yaml" --skip-trl \
    --run-memory "$LAYOUTS-sd3/train_memory.txt" --json "$OUT/sd3.json" 2>&1 | tee -a "$OUT/real.log" \
    | tee "$TABLES/sd3.txt"
  rc[sd3]=${PIPESTATUS[0]}
fi

echo
echo "== summary ($SECONDS s of $BUDGET)"
[ -f "$OUT/gpu_bench.log" ] && sed -n '/^| measurement | value |/,/^$/p' "$OUT/gpu_bench.log"
for table in "$TABLES/sd15.txt" "$TABLES/sd3.txt"; do
  [ -f "$table" ] && echo && sed -n '/^settings:/,$p' "$table"
done
status=0
for part in "${!rc[@]}"; do
  echo "$part rc=${rc[$part]}"
  [ "${rc[$part]}" -eq 0 ] || status=1
done
exit $status
