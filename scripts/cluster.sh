#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, for tests and trials: etcd, kube-apiserver and
# kube-controller-manager (testkit/cluster, built from the Kubernetes Go modules) on free 127.0.0.1
# ports. No scheduler or kubelet: Pods stay Pending.
#
#   scripts/cluster.sh build   build testkit/cluster into <target>/cluster/copycat-cluster (cached)
#   scripts/cluster.sh up      build if needed, start (or reuse a running one), wait until ready;
#                              the last line is `export KUBECONFIG=<path>` (eval "$(… | tail -1)")
#   scripts/cluster.sh down    stop what `up` started (by PID) and remove its data
#   scripts/cluster.sh kubectl ARGS…   the real kubectl (built in) against the running cluster
#
# <target> is $CARGO_TARGET_DIR, else target/. The cluster's files live in <target>/cluster/up/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$target/cluster"
bin="$out/copycat-cluster"
state="$out/up"
pidfile="$out/up.pid"

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# The sources that make the binary: rebuilt when any of them changes.
stamp() {
  (cd "$root/testkit/cluster" && cat go.mod go.sum ./*.go) | sha256sum | cut -d' ' -f1
}

build() {
  command -v go >/dev/null ||
    die "go not found: install Go 1.25 or newer (https://go.dev/doc/install) with access to the Go module proxy"
  local want
  want="$(stamp)"
  if [ -x "$bin" ] && [ "$(cat "$out/copycat-cluster.stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  mkdir -p "$out"
  local version minor
  version="$(sed -n 's/^\tk8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$root/testkit/cluster/go.mod")"
  minor="$(echo "$version" | cut -d. -f2)"
  echo "building copycat-cluster (Kubernetes $version, etcd embedded; once, about 15 minutes on 2 cores)" >&2
  # The version the components report (kubectl version, /version), as the release's own build sets it.
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  local began=$SECONDS
  (cd "$root/testkit/cluster" && go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$bin.tmp" .) ||
    die "building testkit/cluster failed (see the go output above)"
  mv "$bin.tmp" "$bin"
  echo "$want" >"$out/copycat-cluster.stamp"
  echo "built $bin in $((SECONDS - began)) s" >&2
}

running_pid() {
  local pid
  pid="$(cat "$pidfile" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ -f "$state/cluster.json" ] && echo "$pid"
}

up() {
  build
  local pid
  if pid="$(running_pid)"; then
    echo "reusing the running cluster (pid $pid): $(sed -n 's/.*"server": "\(.*\)".*/\1/p' "$state/cluster.json")"
    echo "export KUBECONFIG=$state/kubeconfig"
    return 0
  fi
  rm -rf "$state" && mkdir -p "$state"
  local began=$SECONDS
  setsid "$bin" run --dir "$state" >"$state/run.out" 2>"$state/copycat-cluster.log" </dev/null &
  pid=$!
  echo "$pid" >"$pidfile"
  # copycat-cluster gives up on its own after its --timeout (180 s); this loop only outlives it by a little.
  for _ in $(seq 1 2000); do
    if grep -q '^ready ' "$state/run.out" 2>/dev/null; then
      local line
      line="$(grep '^ready ' "$state/run.out")"
      echo "cluster ready in ${line##* } s (this script: $((SECONDS - began)) s): $(echo "$line" | cut -d' ' -f2)"
      echo "logs: $state/{kube-apiserver,kube-controller-manager,etcd}.log"
      echo "export KUBECONFIG=$state/kubeconfig"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      tail -n 20 "$state/copycat-cluster.log" "$state/kube-apiserver.log" >&2 2>/dev/null || true
      die "copycat-cluster exited before it was ready (logs in $state)"
    fi
    sleep 0.1
  done
  down
  die "not ready in time"
}

down() {
  local pid
  pid="$(cat "$pidfile" 2>/dev/null)" || true
  if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 400); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "still running after 40 s: killing $pid" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped the cluster (pid $pid)"
  else
    echo "no cluster running"
  fi
  rm -f "$pidfile"
  rm -rf "$state"
}

case "${1:-}" in
build) build ;;
up) up ;;
down) down ;;
kubectl)
  shift
  [ -x "$bin" ] || die "not built: run scripts/cluster.sh up"
  exec "$bin" kubectl --kubeconfig="$state/kubeconfig" "$@"
  ;;
*)
  echo "usage: scripts/cluster.sh build|up|down|kubectl ARGS…" >&2
  exit 2
  ;;
esac
