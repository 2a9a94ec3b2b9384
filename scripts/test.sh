#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests, then the model-checking tests
# (vfio-core built against shuttle's primitives, which is a separate build of that crate).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
cargo test -p vfio-core --features shuttle --release --test model "$@"
