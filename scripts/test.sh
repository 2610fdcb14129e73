#!/usr/bin/env bash
# The test command: Rust unit tests, then the package built and installed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
python3 -m pip install --quiet ".[test]"
python3 -m pytest -q tests
