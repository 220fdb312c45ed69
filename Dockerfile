# syntax=docker/dockerfile:1
# Static (musl) images for both binaries, on distroless/static running as uid 65532:
#   docker build --target proxy    -t dependency-proxy:dev .
#   docker build --target operator -t dependency-proxy-operator:dev .
# Not buildable on the project's CI machines (no Docker engine there); tests/e2e/kind.sh uses it.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# musl for fully static binaries; cmake and clang for aws-lc-sys (rustls' crypto provider).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/*
ARG TARGET=x86_64-unknown-linux-musl
RUN rustup target add "${TARGET}"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "${TARGET}" -p dependency-proxy -p dependency-proxy-operator \
 && mkdir -p /out \
 && cp "target/${TARGET}/release/dependency-proxy" "target/${TARGET}/release/dependency-proxy-operator" /out/

FROM gcr.io/distroless/static-debian12:nonroot AS proxy
COPY --from=build /out/dependency-proxy /usr/local/bin/dependency-proxy
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/dependency-proxy"]
CMD ["--config", "/etc/dependency-proxy/config.toml"]

FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/dependency-proxy-operator /usr/local/bin/dependency-proxy-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dependency-proxy-operator"]
CMD ["run"]
