# syntax=docker/dockerfile:1
#
# The emrflow image. One binary is the Ballista scheduler and executor, a ledger peer and the
# batch client: the container's arguments are the subcommand (`scheduler`, `executor`,
# `ledger node --config ...`, `run JOB.toml --cluster ...`).
#
#   docker build -t emrflow:0.1.0 .
#
# The builder compiles the workspace with the project's single profile (`dev`, optimized), so
# the binary is target/debug/emrflow. The runtime is a slim Debian of the same release (same
# glibc) with only that binary, CA certificates (object stores over TLS) and tini, running as an
# unprivileged user. Needs BuildKit (the default builder) for the cache mounts.

# Keep RUST_VERSION equal to the channel in rust-toolchain.toml.
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
ARG RUST_VERSION
# Build with the toolchain the image ships, which is the one rust-toolchain.toml pins, without
# fetching the rustfmt and clippy components that file also lists for development.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts, so a rebuild after a source change
# reuses the DataFusion/Ballista build; the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --workspace --locked --bins \
    && install -D -m 0755 target/debug/emrflow /out/emrflow

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so that Kubernetes can check runAsNonRoot and volumes can be given
# to the group (fsGroup).
RUN groupadd --gid 10001 emrflow \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/emrflow --no-create-home \
        --shell /usr/sbin/nologin emrflow \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/emrflow
COPY --from=builder /out/emrflow /usr/local/bin/emrflow
LABEL org.opencontainers.image.title="emrflow" \
      org.opencontainers.image.description="A provable batch pipeline for electronic medical records" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
WORKDIR /var/lib/emrflow
# tini is PID 1 and forwards signals to emrflow. Stopping sends SIGINT: `emrflow ledger node`
# shuts down cleanly on it (as on Ctrl-C), and a command with no handler for it ends at once.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/emrflow"]
CMD ["--help"]
