#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests, then the QEMU interop test (run
# on its own so that its progress — or, where it cannot run, the reason it skipped — is shown),
# then the model-checking tests (vfio-core built against shuttle's primitives, which is a
# separate build of that crate).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@" -- --skip qemu_guest_drives_our_vfs
cargo test -p xe-vfio --test qemu "$@" -- --nocapture
cargo test -p vfio-core --features shuttle --release --test model "$@"
