# Build: the same command README.md and .ci/run use.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY testkit ./testkit
COPY migrations ./migrations
RUN cargo build --release --locked

# Run: a slim image with the one binary; it runs as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home broadcast
COPY --from=build /src/target/release/broadcast-worker /usr/local/bin/broadcast-worker
USER broadcast
ENTRYPOINT ["broadcast-worker"]
CMD ["run"]
