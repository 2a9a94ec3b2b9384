#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests, then the QEMU guest tests (run
# on their own so that their progress — or, where they cannot run, the reason they skipped — is shown:
# the vfio-user interop test, the kernel VFIO backend against mtty in a guest, and kernel TLS
# in a guest),
# then the model-checking tests (vfio-core built against shuttle's primitives, which is a
# separate build of that crate).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@" -- --skip qemu_guest_
cargo test -p xe-vfio --test qemu --test kernel_vfio --test kernel_tls "$@" -- --nocapture
cargo test -p vfio-core --features shuttle --release --test model "$@"
