# os-credits: the credits service and its pricing policies.
#
#   docker build -t os-credits .
#   docker run -p 8000:80 -v credits-data:/var/lib/os-credits os-credits
#
# or with podman, where no registry is reachable too: `make image`
# (scripts/image.sh; podman also needs
# `--sysctl net.ipv4.ip_unprivileged_port_start=0` to let the service's
# user bind port 80, which docker allows by itself).
#
# The build stage runs docker/build.sh. host/tests/image.rs builds this
# file with podman and runs the image (`make test`).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The crates and the build output persist between builds (cache mounts):
# a rebuild compiles only what changed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    sh docker/build.sh /out

FROM debian:bookworm-slim
# ca-certificates: Perun and SMTP over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/os-credits os-credits
COPY --from=build /out/ /
RUN chown -R os-credits /var/lib/os-credits
ENV CREDITS_HOST=0.0.0.0 \
    CREDITS_PORT=80 \
    OS_CREDITS_DATA_DIR=/var/lib/os-credits \
    OS_CREDITS_POLICY_DIR=/etc/os-credits/policies
# The ledger (SQLite) and the policy folder (drop modules in, hot reload).
VOLUME ["/var/lib/os-credits", "/etc/os-credits/policies"]
EXPOSE 80
# Docker lets containers bind ports below 1024 without root
# (net.ipv4.ip_unprivileged_port_start=0 since Docker 20.10).
USER os-credits
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/os-credits", "ping"]
ENTRYPOINT ["/usr/local/bin/os-credits"]
CMD ["serve"]
