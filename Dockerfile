# Two stages: build the release binary, then run it on a slim base as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY config config
COPY benches benches
RUN cargo build --release --locked --bin keyward

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/keyward --create-home keyward
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
USER keyward
WORKDIR /var/lib/keyward
ENV KEYWARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Production needs DATABASE_URL (postgres://...), KEYWARD_MASTER_KEYS and KEYWARD_ADMIN_SECRETS;
# REDIS_URL when running more than one replica.
ENTRYPOINT ["keyward"]
CMD ["serve"]
