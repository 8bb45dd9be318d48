# syntax=docker/dockerfile:1
# copycat container image. Build: docker build -t ghcr.io/copycat/copycat:0.1.0 .   (docs/install.md;
# the tag is the version in Cargo.toml, as the manifest names it)
# Without Docker, scripts/image.sh builds the equivalent image (same user, entrypoint, command and
# ports; tests/it/image.rs compares them) as an OCI layout.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build artefacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin copycat \
 && mkdir -p /debug \
 && objcopy --only-keep-debug target/release/copycat /debug/copycat.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/debug/copycat.debug target/release/copycat /tmp/copycat \
 && install -D -m 0755 /tmp/copycat /out/usr/local/bin/copycat \
 && ln -s /usr/local/bin/copycat /out/k8s-copycat
# The image holds the binary without debug information (as scripts/image.sh builds it); the build
# stage keeps it in /debug/copycat.debug (docker build --target build, then docker cp).

# glibc, libgcc and a CA bundle, no shell; runs as uid/gid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
# /out holds the binary and /k8s-copycat, a link to it: specs written for k8s-copycat's image
# (`command: ["/k8s-copycat"]`) start copycat. Copying the directory keeps the link a link.
COPY --from=build /out/ /
USER 65532:65532
# METRICS_ADDR (/metrics, admin endpoints) and HEALTH_ADDR (/healthz, /readyz).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/copycat"]
CMD ["run"]
