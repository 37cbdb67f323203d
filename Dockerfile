# One image for every role; HEARTY_ROLES picks what a container runs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
COPY sagas ./sagas
RUN cargo build --release --locked -p hearty

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin hearty \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /src/target/release/hearty /usr/local/bin/hearty
COPY sagas /app/sagas
WORKDIR /app
# Not root: the process owns only its data folder.
USER 10001:10001
ENV HEARTY_HTTP_ADDR=0.0.0.0:8080 \
    HEARTY_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["hearty"]
CMD ["serve"]
