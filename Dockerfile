# os-credits: the credits service and its pricing policies.
#
#   docker build -t os-credits .
#   docker run -p 8000:80 -v credits-data:/var/lib/os-credits os-credits
#
# The build stage runs docker/build.sh. host/tests/image.rs runs this
# file's steps as written, without a Docker engine: the build stage's RUN,
# then the runtime stage's ENV, VOLUMEs, EXPOSE, ENTRYPOINT/CMD and
# HEALTHCHECK on what it staged.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN sh docker/build.sh /out

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
