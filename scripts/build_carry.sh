#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh needs into .carry/ (git-ignored): the abi3 wheel and the
# criterion kernel-bench binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .carry/wheels .carry/bin
mkdir -p .carry/bin
maturin build --release --quiet -o .carry/wheels
bench=$(cargo bench --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "kernels" and m.get("executable"):
        print(m["executable"])')
cp "$bench" .carry/bin/kernels
ls -la .carry/wheels .carry/bin
