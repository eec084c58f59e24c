# syntax=docker/dockerfile:1
# Build: the same `cargo build --release --locked` the test suite runs.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin amqp-relay

# Runtime: glibc, CA roots for amqps:// brokers, the binary; nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/amqp-relay /usr/local/bin/amqp-relay
USER 10001:10001
ENTRYPOINT ["amqp-relay"]
