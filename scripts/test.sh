#!/usr/bin/env bash
# The test command: Rust unit tests (and the kernel benches compiled), then the package built and
# installed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
cargo bench --no-run --quiet
python3 -m pip install --quiet ".[test]"
python3 -m pytest -q tests
