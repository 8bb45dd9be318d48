# syntax=docker/dockerfile:1
# copycat container image. Build: docker build -t copycat:dev .   (docs/install.md)
# Not built by scripts/test.sh: no container engine runs in the test environment.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build artefacts between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin copycat \
 && install -D -m 0755 target/release/copycat /out/copycat

# glibc, libgcc and a CA bundle, no shell; runs as uid/gid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/copycat /usr/local/bin/copycat
USER 65532:65532
# METRICS_ADDR (/metrics, admin endpoints) and HEALTH_ADDR (/healthz, /readyz).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/copycat"]
CMD ["run"]
