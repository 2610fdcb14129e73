#!/usr/bin/env bash
# GPU tests in one call on a machine with an NVIDIA GPU, Python 3.12 (numpy, pytest, torch,
# transformers) and no Rust toolchain. Build the inputs first on a development machine:
#     maturin build --release -o .carry/wheels
# then run this from the repository root with .carry present. Logs go to $OUT (default ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
site=$(mktemp -d)
python3 -m pip install --quiet --no-deps --target "$site" .carry/wheels/qwen3_rs-*.whl 2>&1 | tee "$OUT/install.log"
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 QWEN3_RS_REQUIRE_GPU=1
export QWEN3_RS_CACHE_DIR=${QWEN3_RS_CACHE_DIR:-$(mktemp -d)}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m pytest -v -rs tests "$@" 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}
exit "$status"
