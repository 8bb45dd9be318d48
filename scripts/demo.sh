#!/usr/bin/env bash
# copycat's main job in a couple of minutes, without a cluster: a source and a target registry and a
# stand-in Kubernetes API server on 127.0.0.1, sample workloads, and `copycat run` mirroring what they
# use (see testkit/src/bin/demo.rs). From a fresh Debian machine: installs what it needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: docker-registry (CNCF distribution 2.8) for both registries, skopeo to verify digests.
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --bin copycat
exec cargo run --release -p testkit --bin demo -- --copycat "${CARGO_TARGET_DIR:-target}/release/copycat"
