# syntax=docker/dockerfile:1
#
# Builds the blameless binary and a small runtime image for it.
#
#   docker build -t blameless:dev .
#   docker run --rm blameless:dev --help

FROM rust:1.88-bookworm AS builder

# rdkafka compiles librdkafka from source. cmake is needed when rdkafka's
# cmake-build feature drives that build, and libssl-dev with pkg-config when
# its ssl feature links OpenSSL for TLS connections to brokers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep downloaded crates and compiled dependencies between
# builds. target/ lives in a cache mount, so the binary is copied out in the
# same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p blameless \
    && install -m 0755 target/release/blameless /usr/local/bin/blameless


FROM debian:bookworm-slim

# ca-certificates lets the binary verify the TLS certificates of brokers,
# Schema Registry, S3 and ticketing APIs. libssl3 serves a binary that links
# OpenSSL dynamically (rdkafka with its ssl feature), and is unused otherwise.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin blameless \
    && mkdir -p /var/lib/blameless/tickets \
    && chown -R blameless /var/lib/blameless

COPY --from=builder /usr/local/bin/blameless /usr/local/bin/blameless

USER blameless
# Prometheus /metrics and /health, when BLAMELESS__METRICS__ADDRESS is 0.0.0.0:9464.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/blameless"]
CMD ["--help"]
