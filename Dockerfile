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
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hearty /usr/local/bin/hearty
COPY sagas /app/sagas
WORKDIR /app
ENV HEARTY_HTTP_ADDR=0.0.0.0:8080 \
    HEARTY_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["hearty"]
CMD ["serve"]
