#!/usr/bin/env bash
# copycat's main job without a cluster: a source and a target registry and a stand-in Kubernetes API
# server on 127.0.0.1, sample workloads, and `copycat run` mirroring what they use (see
# testkit/src/bin/demo.rs). From a fresh Debian machine: installs what it needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: docker-registry (CNCF distribution 2.8) for both registries, skopeo to verify digests.
source scripts/lib/packages.sh
ensure_packages docker-registry:docker-registry skopeo:skopeo

# One build of both binaries in the dev profile the tests use too (dependencies optimised, our code
# not): the demo mirrors a few small images, so a release build (three times longer) buys nothing
# here, and scripts/test.sh afterwards reuses every artefact.
target="${CARGO_TARGET_DIR:-target}"
if [ ! -x "$target/debug/copycat" ] || [ ! -x "$target/debug/demo" ]; then
  echo "building copycat and the demo: about 6 minutes on 2 cores the first time (cargo's progress below), seconds afterwards"
fi
cargo build --locked -p copycat --bin copycat -p testkit --bin demo
exec "$target/debug/demo" --copycat "$target/debug/copycat"
