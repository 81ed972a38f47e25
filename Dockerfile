# syntax=docker/dockerfile:1
#
# firstseen container image.
#
# Build:   docker build -t firstseen:dev .
# Run:     docker run --read-only \
#            -v firstseen-state:/var/lib/firstseen \
#            -v "$PWD/config:/etc/firstseen:ro" \
#            -e FIRSTSEEN_WEBHOOK_SECRET=whsec_... \
#            -p 9464:9464 firstseen:dev
#
# Layout inside the image:
#   /usr/local/bin/firstseen   the binary (static except glibc/libgcc/libstdc++)
#   /etc/firstseen/            configuration: firstseen.toml and rules/ (mount read-only)
#   /var/lib/firstseen/        state: RocksDB (terms, outbox, checkpoints, dead letters)
#                              and, by convention, asn/ with the ASN database. Mount a
#                              persistent volume here; it is the only writable path.
#
# The root filesystem can be read-only: firstseen writes only below
# /var/lib/firstseen (RocksDB keeps its LOCK, WAL and logs inside its own
# directory) and needs no /tmp.
#
# Health check: the runtime image is distroless (no shell, no curl), so the
# binary probes itself: `firstseen healthcheck` exits 0 when /readyz answers
# 200 (`--live` for /healthz). Docker uses the HEALTHCHECK below; on
# Kubernetes use the HTTP probes in deploy/kubernetes/statefulset.yaml:
#   livenessProbe  GET /healthz on port 9464  (process alive)
#   readinessProbe GET /readyz  on port 9464  (RocksDB open, ASN database
#                  loaded, rules loaded, every partition receiver attached or
#                  retrying within bounds; 503 with a JSON body naming the
#                  failing check otherwise)

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
# librocksdb-sys generates its bindings with bindgen at build time (libclang);
# RocksDB itself is compiled from the vendored C++ sources (clang).
# Versions are not pinned: the builder follows Debian bookworm's security
# updates, and nothing from these packages reaches the runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the (RocksDB-heavy) target directory
# between builds without putting them in a layer; the binary is copied out
# in the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin firstseen \
 && install -D -m 0755 target/release/firstseen /out/firstseen \
 && install -d -m 0700 /out/state

# distroless/cc: glibc, libgcc and libstdc++ (RocksDB is C++), CA
# certificates for the webhook's rustls roots, and a `nonroot` user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/firstseen /usr/local/bin/firstseen
COPY --from=builder --chown=65532:65532 /out/state /var/lib/firstseen
USER 65532:65532
WORKDIR /var/lib/firstseen
VOLUME ["/var/lib/firstseen"]
# Prometheus metrics, /healthz and /readyz.
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/firstseen", "healthcheck", "--addr", "127.0.0.1:9464"]
ENTRYPOINT ["/usr/local/bin/firstseen"]
CMD ["run", "--config", "/etc/firstseen/firstseen.toml"]
