# A local stand-in for python:3.11-slim (ops/images.sh): Debian's python3 in a venv that is first on PATH, so
# `python`, `pip install …` and console scripts behave as in the official image.
ARG DEBIAN_IMAGE=litemedsam-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 \
    PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/site-ca.crt \
    SSL_CERT_FILE=/etc/ssl/certs/site-ca.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/site-ca.crt
COPY site-ca.crt /etc/ssl/certs/site-ca.crt
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /usr/local/python \
 && /usr/local/python/bin/pip install --no-cache-dir --upgrade pip
CMD ["python3"]
