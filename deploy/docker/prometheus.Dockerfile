# Prometheus from Debian's `prometheus` package, for the compose stack where
# prom/prometheus cannot be pulled (LAYERSCOPE_PROMETHEUS_IMAGE=layerscope-prometheus:local).
# Laid out like the official image: the binary as the entrypoint, configuration under
# /etc/prometheus (mounted by docker-compose.yml), data in /prometheus, user nobody,
# busybox-like wget for the compose healthcheck.
#   docker build --network host --build-arg BASE_IMAGE=layerscope-base:bookworm \
#     -f deploy/docker/prometheus.Dockerfile -t layerscope-prometheus:local deploy/docker
ARG BASE_IMAGE=layerscope-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /prometheus /etc/prometheus \
 && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
