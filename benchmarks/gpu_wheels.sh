#!/usr/bin/env bash
# Fetch, on this machine, the Python packages benchmarks/gpu_check.sh needs that the lent GPU machine lacks, into
# .whl/ (ignored by git) for `run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ...])`.
#
#   bash benchmarks/gpu_wheels.sh [--help]     # -> .whl/site-py312.tar.xz (~36 MB) + .whl/MANIFEST.txt
#
# The GPU machine's python3 (3.12, x86-64) has CUDA torch, transformers 5.17, accelerate, peft, pandas, pyarrow,
# psutil, click, protobuf, msgpack, grpcio, nvidia-ml-py, ninja, py-cpuinfo, einops, xxhash and fsspec, and nothing
# reaches a registry from there. Carried (versions = this checkout's .venv, what the CPU tests ran with):
#   ray                      Ray core + Data (python -m icg_rl.train), pruned and repacked (below)
#   jsonschema, jsonschema-specifications, referencing, rpds-py         ray's own needs missing there
#   diffusers                the pipelines
#   pydantic, pydantic-core, annotated-types, typing-inspection         the config (and DeepSpeed's)
#   deepspeed, hjson         the learner group (deepspeed ships only an sdist: a pure-python wheel is built here)
#   transformers             5.24 (the machine's 5.17 predates APIs the Qwen2-VL path and real_layouts.py use)
#   trl, datasets, dill, multiprocess                                   trl 0.23.1's DDPOTrainer, the GPU peer
# Ray's wheel (79 MB) alone is over the 64 MiB a call may carry (tree, wheels and carried models together). So
# every wheel is installed here into one site folder for the GPU machine's platform; Ray's Java jars, RLlib, LLM
# serving and dashboard web client are removed (a local cluster without a dashboard imports none of them), the ELF
# binaries stripped of symbols, and the folder packed as tar.xz; gpu_check.sh unpacks it into /tmp/site.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then sed -n '2,20p' "$0"; exit 0; fi
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEST=.whl
PACKAGES=(jsonschema jsonschema-specifications referencing rpds-py diffusers pydantic pydantic-core annotated-types
          typing-inspection hjson transformers trl datasets dill multiprocess)
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for name in "${PACKAGES[@]}" ray; do
  "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$WORK/wheels" "$name==$(version "$name")"
done
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "deepspeed==$(version deepspeed)"
"$PY" -m pip install -q --no-deps --no-index --no-compile --target "$WORK/site" "${PLATFORM[@]}" "$WORK"/wheels/*.whl
rm -rf "$WORK"/site/ray/{jars,rllib,llm,dashboard/client} "$WORK/site/bin"
find "$WORK/site" -type f \( -name "*.so*" -o -perm -u+x \) -exec sh -c \
  'file -b "$1" | grep -q "^ELF.*not stripped" && strip --strip-unneeded "$1" || true' _ {} \;

rm -rf "$DEST" && mkdir -p "$DEST"
tar -C "$WORK/site" -cf - . | xz -6 -T0 > "$DEST/site-py312.tar.xz"
(cd "$WORK/wheels" && ls -1 ./*.whl | sed 's|^\./||') > "$DEST/MANIFEST.txt"
cat "$DEST/MANIFEST.txt"
du -sh "$DEST"
