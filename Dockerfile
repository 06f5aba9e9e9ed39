# Multi-stage build of realtide. SQLite and libpq are bundled into the binary.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# Cargo.toml names the bench target, and the server serves the JS client
# and the console.
COPY benches ./benches
COPY clients/js/realtide.js ./clients/js/realtide.js
COPY clients/console ./clients/console
RUN cargo build --release --locked --bin realtide

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/realtide /usr/local/bin/realtide
ENV REALTIDE_BIND=0.0.0.0:4000
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:4000/readyz || exit 1
ENTRYPOINT ["realtide"]
CMD ["serve"]
