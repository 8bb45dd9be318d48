#!/usr/bin/env bash
# copycat's container image without a container engine: an OCI image layout (default
# <target>/image, <target> being $CARGO_TARGET_DIR or target/) holding the release binary, the
# shared libraries it needs from this machine, CA certificates and a passwd entry for uid 65532;
# no shell. Runs as 65532:65532, `copycat run` by default, like the Dockerfile's image.
#
#   scripts/image.sh [--no-build] [--out DIR] [--push REF [--insecure]]
#
#   --no-build   use the release binary already built (cargo build --release --bin copycat)
#   --out DIR    write the layout to DIR instead of <target>/image
#   --push REF   then push it with skopeo to REF (e.g. registry.example.com/tools/copycat:0.1.0),
#                credentials from `skopeo login` (or REGISTRY_AUTH_FILE); prints the digest last
#   --insecure   plain HTTP / unverified TLS for --push
#   IMAGE_SOURCE the org.opencontainers.image.source label (default https://github.com/copycat/copycat)
#
# Reproducible: every timestamp is the commit time (also the `created` label), entries are sorted,
# owners and modes fixed; two builds of one commit give the same digest. Architecture: this
# machine's (amd64 or arm64); see docs/install.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$target/image"
build=true push="" insecure=false
while [ $# -gt 0 ]; do
  case "$1" in
  --no-build) build=false ;;
  --out) out="$2" && shift ;;
  --push) push="$2" && shift ;;
  --insecure) insecure=true ;;
  *) echo "usage: scripts/image.sh [--no-build] [--out DIR] [--push REF [--insecure]]" >&2 && exit 2 ;;
  esac
  shift
done
die() {
  echo "image.sh: $*" >&2
  exit 1
}

cd "$root"
if $build; then
  cargo build --release --locked --bin copycat
fi
bin="$target/release/copycat"
[ -x "$bin" ] || die "$bin not built: run without --no-build (cargo build --release --locked --bin copycat)"

case "$(uname -m)" in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
*) die "unsupported architecture $(uname -m): the image is built for this machine's (amd64 or arm64)" ;;
esac

# The dynamic loader and every library the binary links, at the paths the loader looks them up.
libs=()
while read -r line; do
  case "$line" in
  linux-vdso* | "") ;;
  *"=> not found"*) die "ldd: $line" ;;
  *"=> "*) path="$(echo "$line" | sed -n 's/.*=> \([^ ]*\) (.*/\1/p')" && libs+=("--lib" "$path=$(readlink -f "$path")") ;;
  /*) path="${line%% *}" && libs+=("--lib" "$path=$(readlink -f "$path")") ;;
  *) die "unexpected ldd output: $line" ;;
  esac
done < <(ldd "$bin" | sed 's/^[[:space:]]*//')

ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "$ca missing: apt-get install -y ca-certificates"
command -v python3 >/dev/null || die "python3 missing: apt-get install -y python3"

revision="$(git rev-parse HEAD)"
created="$(git log -1 --format=%ct HEAD)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "image.sh: the work tree has uncommitted changes; labels name commit $revision" >&2
fi
version="$("$bin" --version | awk '{print $2}')"
# Not the git remote: it may be a local path, or carry credentials.
source_url="${IMAGE_SOURCE:-https://github.com/copycat/copycat}"

# The image gets the binary without its debug information (the release build keeps line tables for
# readable backtraces: 164 MB with them, about a sixth without); the debug information goes to
# <target>/copycat-VERSION.debug beside the layout, linked by name and checksum (.gnu_debuglink),
# for gdb or addr2line on a core file or an address from a crash.
command -v objcopy >/dev/null || die "objcopy missing: apt-get install -y binutils"
debug_file="$(dirname "$out")/copycat-$version.debug"
stripped_dir="$(mktemp -d)"
trap 'rm -rf "$stripped_dir"' EXIT
objcopy --only-keep-debug "$bin" "$debug_file"
(cd "$(dirname "$debug_file")" && objcopy --strip-debug --add-gnu-debuglink="$(basename "$debug_file")" "$bin" "$stripped_dir/copycat")

digest="$(python3 scripts/lib/oci_image.py --out "$out" --binary "$stripped_dir/copycat" "${libs[@]}" --ca-bundle "$ca" \
  --arch "$arch" --created "$created" --tag "$version" \
  --label "org.opencontainers.image.title=copycat" \
  --label "org.opencontainers.image.description=Keeps a backup copy of every container image a Kubernetes cluster runs in a registry you control" \
  --label "org.opencontainers.image.licenses=Apache-2.0" \
  --label "org.opencontainers.image.source=$source_url" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.created=$(date -u -d "@$created" +%Y-%m-%dT%H:%M:%SZ)")"
layer_size="$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/blobs/sha256/"+sys.argv[2].split(":")[1])); print(sum(l["size"] for l in m["layers"]))' "$out" "$digest")"
echo "image: $out ($arch, copycat $version, tag $version, $((layer_size / 1048576)) MiB compressed) $digest"
echo "debug information: $debug_file"

if [ -n "$push" ]; then
  command -v skopeo >/dev/null || die "skopeo missing: apt-get install -y skopeo"
  tls=()
  $insecure && tls=(--dest-tls-verify=false)
  digestfile="$stripped_dir/digest"
  skopeo copy --quiet --preserve-digests "${tls[@]}" --digestfile "$digestfile" "oci:$out:$version" "docker://$push"
  pushed="$(cat "$digestfile")"
  [ "$pushed" = "$digest" ] || die "pushed digest $pushed differs from the layout's $digest"
  echo "pushed $push@$pushed"
  echo "$pushed"
fi
