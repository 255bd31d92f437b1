# syntax=docker/dockerfile:1
#
# rolemint, built from this repository:
#   docker build -t rolemint .
#   docker run --rm -v $PWD/rolemint.toml:/etc/rolemint/rolemint.toml:ro -p 6432:6432 rolemint
# docker-compose.yml runs it next to a demo PostgreSQL.
#
# A .dockerignore listing target/ and .git/ keeps the build context small.

# --- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# libbpf (the kernel splice's loader) is compiled from source by the
# libbpf-sys crate and needs libelf's and zlib's headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libelf-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY . .
# The caches keep downloaded crates and compiled dependencies between builds;
# the binary is copied out because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rolemint \
 && cp target/release/rolemint /usr/local/bin/rolemint

# --- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: for a backend reached with tls = "verify-full" against a
# public CA, and for JWKS over HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# An unprivileged user: the proxy needs no privileges (6432 is not a
# privileged port) and holds the backend's admin password.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin rolemint
COPY --from=build /usr/local/bin/rolemint /usr/local/bin/rolemint
USER rolemint:rolemint
EXPOSE 6432 8200
# Liveness through the admin listener's /healthz, with rolemint itself as the
# HTTP client (the image has no curl). Needs `[admin] listen` in the config;
# the address is read from it (0.0.0.0 is probed as 127.0.0.1). --insecure:
# the probe may hit an HTTPS listener whose certificate names the service,
# not localhost; it sends no token.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["rolemint", "health", "--config", "/etc/rolemint/rolemint.toml", "--insecure"]
ENTRYPOINT ["rolemint"]
CMD ["serve", "--config", "/etc/rolemint/rolemint.toml"]
