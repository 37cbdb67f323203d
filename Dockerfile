# One image for every role; HEARTY_ROLES picks what a container runs.
#
# Three stages: the dependencies are built from the manifests alone (a
# layer that stays cached until Cargo.toml or Cargo.lock change), then the
# sources; the runtime image holds the binary and the saga files and runs
# as an unprivileged user. `.dockerignore` keeps target/ and data out of the
# build context.
FROM rust:1.95-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs && touch bench/src/lib.rs \
 && cargo build --release --locked -p hearty \
 && rm -rf src bench/src

FROM deps AS build
COPY src ./src
COPY bench ./bench
COPY sagas ./sagas
# The placeholder's artifacts are older than the real sources: touch them so
# cargo rebuilds the crate itself (the dependencies stay cached).
RUN touch src/main.rs src/lib.rs && cargo build --release --locked -p hearty

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin hearty \
 && mkdir -p /data /snapshots /backups && chown 10001:10001 /data /snapshots /backups
COPY --from=build /src/target/release/hearty /usr/local/bin/hearty
COPY sagas /app/sagas
WORKDIR /app
# Not root: the process owns only its data folder. (No VOLUME: the compose
# file and the manifests name their volumes; an anonymous one would outlive
# its container unnoticed.)
USER 10001:10001
ENV HEARTY_HTTP_ADDR=0.0.0.0:8080 \
    HEARTY_DATA_DIR=/data
EXPOSE 8080 9090
ENTRYPOINT ["hearty"]
CMD ["serve"]
