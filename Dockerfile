# syntax=docker/dockerfile:1
# Build: docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t audit-manager .
# Run:   docker run -p 8000:8000 -v audit-spool:/var/lib/audit-manager audit-manager serve --roles ingest
#
# The image holds the service binary only: the load generator (bench/loadgen) is a workspace
# member of its own and is not built here (tests/process/packaging.rs checks both).

FROM rust:1.95-bookworm AS build
# librdkafka is compiled from source by rdkafka-sys: it needs make, perl, zlib headers and
# OpenSSL headers (TLS and SASL to Kafka).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make perl pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .dockerignore leaves .git out of the context, so the commit for GET /version comes in here.
ARG GIT_COMMIT=unknown
RUN GIT_COMMIT="$GIT_COMMIT" cargo build --release --locked --bin audit-manager \
 && cp target/release/audit-manager /usr/local/bin/audit-manager

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS to Kafka links the system OpenSSL; ca-certificates: the CAs TLS to
# Kafka and PostgreSQL trust when no CA file is configured.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/audit-manager --create-home audit
COPY --from=build /usr/local/bin/audit-manager /usr/local/bin/audit-manager
COPY config/default.yaml /etc/audit-manager/config.yaml
USER audit
WORKDIR /var/lib/audit-manager
# The spool must live on a persistent volume: it holds events answered 202 but not yet in Kafka.
VOLUME ["/var/lib/audit-manager"]
ENV CONFIG_PATH=/etc/audit-manager/config.yaml \
    AUDIT_MANAGER__SPOOL__PATH=/var/lib/audit-manager/spool \
    LOG_FORMAT=json
EXPOSE 8000
# tini forwards SIGTERM so the service drains (finishes in-flight commits) and exits 0.
ENTRYPOINT ["/usr/bin/tini", "--", "audit-manager"]
CMD ["serve"]
