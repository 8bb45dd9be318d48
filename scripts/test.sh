#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (idempotent), then runs
# cargo fmt --check, clippy with -D warnings, and every test. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real registries (docker-registry = CNCF distribution 2.8), skopeo as the
# independent verifier, htpasswd for basic-auth registries, openssl for test certificates, containerd
# (node-config's hosts.toml files pulled through by a containerd the tests start on its own socket).
source scripts/lib/packages.sh
ensure_packages docker-registry:docker-registry skopeo:skopeo htpasswd:apache2-utils openssl:openssl containerd:containerd

# moto (the ECR control plane for ECR tests) and kubernetes-validate (offline schema check of
# manifests/k8s.yaml) in a project-local virtualenv.
venv="${COPYCAT_VENV:-$PWD/target/venv}"
if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing moto[server] and kubernetes-validate into $venv"
  # Debian's python3 makes virtualenvs only with python3-venv (ensurepip) installed.
  python3 -c 'import ensurepip' 2>/dev/null || install_packages python3-venv
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]==5.2.5' 'kubernetes-validate==1.37.0'
fi
export COPYCAT_MOTO_SERVER="$venv/bin/moto_server"

# The install manifest and the CRDs against the Kubernetes schemas, offline. --strict rejects unknown fields; an
# unknown kind (or apiVersion) is only a WARN with exit 0, so any output line fails too.
if ! validation=$("$venv/bin/kubernetes-validate" --strict --quiet manifests/k8s.yaml manifests/crds/*.yaml 2>&1) ||
  [ -n "$validation" ]; then
  echo "manifests/k8s.yaml or manifests/crds/ fail validation:" >&2
  echo "$validation" >&2
  exit 1
fi

# A failing test's panic message, not thirty frames of tokio, must end up in the tail CI shows.
export RUST_BACKTRACE=0

# Rust tools: rustfmt and clippy come with the toolchain (rustup components); cargo-nextest runs the
# tests (one closing summary, per-test time limits from .config/nextest.toml) and is installed from
# crates.io when missing. Anything that cannot be installed stops here, saying how to get it.
for component in rustfmt:fmt clippy:clippy; do
  if ! cargo "${component#*:}" --version >/dev/null 2>&1; then
    echo "cargo ${component#*:} is missing: install it with 'rustup component add ${component%%:*}'" >&2
    exit 1
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest from crates.io (once; about 5 minutes on 2 cores)"
  if ! cargo install --locked --quiet cargo-nextest; then
    echo "could not install cargo-nextest from crates.io: install it with 'cargo install --locked cargo-nextest'" >&2
    exit 1
  fi
fi

cargo fmt --all --check

# The real Kubernetes control plane the real_cluster tests start (testkit/cluster: etcd,
# kube-apiserver, kube-controller-manager and kubectl from the Kubernetes Go modules). Built once into
# <target>/cluster and rebuilt only when its sources change; the first build takes about 15 minutes
# on 2 cores. Needs Go 1.25+ and the Go module proxy.
bash scripts/cluster.sh build

cargo clippy --workspace --all-targets -- -D warnings

# copycat's container image without a container engine (a release build, then an OCI layout in
# <target>/image); tests/it/image.rs unpacks it and runs it under chroot.
bash scripts/image.sh

cargo nextest run --workspace --no-fail-fast
# The tests nextest counts as skipped, and why: each is #[ignore]d with its reason on purpose.
echo "skipped on purpose (#[ignore = reason]):"
grep -rn --include='*.rs' -A1 '#\[ignore = ' src tests testkit |
  awk -F'"' '/#\[ignore = / { why = $2; next } match($0, /fn [a-z0-9_]+/) { print "  " substr($0, RSTART + 3, RLENGTH - 3) ": " why }'
# nextest does not run doctests.
cargo test --workspace --doc --quiet
