# A local stand-in for redis:7.2-alpine (ops/images.sh): Debian's redis-server and redis-cli, run as user redis,
# data in /data (compose.yaml mounts its volume there).
ARG DEBIAN_IMAGE=litemedsam-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
