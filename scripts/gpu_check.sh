#!/usr/bin/env bash
# GPU tests and benchmarks in one call, on a machine with an NVIDIA GPU and Python (numpy, pytest;
# torch and transformers for the reference comparisons) but no Rust toolchain. Build the inputs on a
# development machine first:
#     bash scripts/build_carry.sh
# then run this from the repository root with .carry present. Logs go to $OUT (default ./gpu-out).
#     scripts/gpu_check.sh [tests|bench|multi|all|PARTS] [extra pytest args]
# PARTS is a comma-separated list of tests, kernels, decode, prefill, multi and profile; bench
# means kernels,decode,prefill and all means tests plus bench. profile traces decode steps with
# Nsight Systems ($NSYS, default nsys) and prints where their time goes (scripts/decode_trace.py).
# $TESTS narrows the test run to some files (default: the whole tests directory).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
shift || true
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
site=$(mktemp -d)
python3 -m pip install --quiet --no-deps --target "$site" .carry/wheels/qwen3_rs-*.whl > "$OUT/install.log" 2>&1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 QWEN3_RS_REQUIRE_GPU=1
export QWEN3_RS_CACHE_DIR=${QWEN3_RS_CACHE_DIR:-$(mktemp -d)}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
case "$what" in
    all) what=tests,kernels,decode,prefill ;;
    bench) what=kernels,decode,prefill ;;
esac
has() { [[ ",$what," == *",$1,"* ]]; }
status=0
if has tests; then
    python3 -m pytest -q -rs ${TESTS:-tests} "$@" 2>&1 | tee "$OUT/pytest.log"
    status=${PIPESTATUS[0]}
    # Whether the test selection covers a file (the default and "tests" cover every file).
    selected() { [[ -z "${TESTS:-}" || "$TESTS" == tests || "$TESTS" == tests/ || "$TESTS" == *"$1"* ]]; }
    if selected tests/test_prefill_gpu.py \
        && [[ "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)" == 9.0 ]]; then
        # The portable mma.sync prompt kernels, which other GPUs run, on this Hopper GPU too.
        QWEN3_RS_ARCH=sm_90 python3 -m pytest -q -rs tests/test_prefill_gpu.py -m "not slow" 2>&1 \
            | tee "$OUT/pytest-sm90.log"
        status=$(( status | PIPESTATUS[0] ))
    fi
fi
if has kernels; then
    .carry/bin/kernels --bench --noplot 2>&1 | tee "$OUT/bench-kernels.log" | grep -v "^Benchmarking\|^ *$"
fi
if has decode; then
    python3 -m qwen3_rs bench --peers --random-model-dir /tmp/qwen3-8b-random 2>&1 | tee "$OUT/bench-e2e.log"
    python3 -m qwen3_rs bench --random-model-dir /tmp/qwen3-8b-random --kv-cache-dtype q8 --contexts 4096 16384 32768 \
        2>&1 | tee -a "$OUT/bench-e2e.log"
fi
if has prefill; then
    python3 -m qwen3_rs bench --prefill --random-model-dir /tmp/qwen3-8b-random 2>&1 | tee "$OUT/bench-prefill.log"
fi
if has profile; then
    for run in fp16:128 fp16:4096 q8:4096; do
        kv=${run%:*} ctx=${run#*:}
        trace="$OUT/decode-$kv-$ctx"
        ${NSYS:-nsys} profile --cuda-graph-trace=node -t cuda --force-overwrite true -o "$trace" python3 -m qwen3_rs bench \
            --random-model-dir /tmp/qwen3-8b-random --kv-cache-dtype "$kv" --contexts "$ctx" --steps 20 \
            > "$trace.log" 2>&1
        ${NSYS:-nsys} export --type sqlite --force-overwrite true -o "$trace.sqlite" "$trace.nsys-rep" >> "$trace.log" 2>&1
        echo "== $kv KV cache, context $ctx"
        python3 scripts/decode_trace.py "$trace.sqlite" 2>&1 | tee "$trace.txt"
        rm -f "$trace.nsys-rep" "$trace.sqlite" "$trace.qdstrm"
    done
fi
if has multi; then
    python3 -m pytest -q -rs tests/test_multi_gpu.py "$@" 2>&1 | tee "$OUT/pytest-multi.log"
    status=${PIPESTATUS[0]}
    python3 -m qwen3_rs bench --random-model-dir /tmp/qwen3-8b-random --multi-gpu 2>&1 | tee "$OUT/bench-multi.log"
fi
exit "$status"
