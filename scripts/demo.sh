#!/usr/bin/env bash
# copycat's main job in a couple of minutes, without a cluster: a source and a target registry and a
# stand-in Kubernetes API server on 127.0.0.1, sample workloads, and `copycat run` mirroring what they
# use (see testkit/src/bin/demo.rs). From a fresh Debian machine: installs what it needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: docker-registry (CNCF distribution 2.8) for both registries, skopeo to verify digests.
source scripts/lib/packages.sh
ensure_packages docker-registry:docker-registry skopeo:skopeo

cargo build --release --bin copycat
exec cargo run --release -p testkit --bin demo -- --copycat "${CARGO_TARGET_DIR:-target}/release/copycat"
