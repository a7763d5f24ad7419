#!/usr/bin/env bash
# Local stand-ins for the third-party images compose.yaml and ops/worker.Dockerfile start from, for a machine that
# reaches Debian's and PyPI's mirrors but no image registry:
#
#   litemedsam-local/debian:bookworm   debootstrap --variant=minbase from this machine's Debian mirror, imported
#   litemedsam-local/python:3.11-slim  Debian's python3 (3.11) in a venv on PATH; stands in for python:3.11-slim
#   litemedsam-local/redis:7           Debian's redis-server (user redis); stands in for redis:7.2-alpine
#   litemedsam-local/flower:2          Flower from PyPI (user flower, `celery flower`); stands in for mher/flower
#
#   ops/images.sh >> .env        # builds what is missing, prints PYTHON_IMAGE=…, REDIS_IMAGE=…, FLOWER_IMAGE=…
#   ops/images.sh --rebuild      # builds all four again
#
# A site with a registry needs none of this: compose.yaml's defaults are the official images.
# Builds run with --network host (the package mirrors as the host reaches them). The host's CA bundle
# (/etc/ssl/certs/ca-certificates.crt, or $SITE_CA_BUNDLE) goes into the Python base so pip trusts what the
# host trusts (e.g. an egress proxy's CA). Needs root (debootstrap) and a running Docker daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX="${LOCAL_IMAGE_PREFIX:-litemedsam-local}"
SUITE="${DEBIAN_SUITE:-bookworm}"
CA_BUNDLE="${SITE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
DEBIAN_IMAGE="$PREFIX/debian:$SUITE"
PYTHON_IMAGE="$PREFIX/python:3.11-slim"
REDIS_IMAGE="$PREFIX/redis:7"
FLOWER_IMAGE="$PREFIX/flower:2"

rebuild=0
case "${1:-}" in
  --rebuild) rebuild=1 ;;
  "") ;;
  *) echo "usage: $0 [--rebuild]" >&2; exit 2 ;;
esac

log() { echo "images.sh: $*" >&2; }
have() { [ "$rebuild" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this machine's apt uses (deb822 "URIs:" or a one-line "deb" source of the main archive).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {print $2}' | grep -v -- '-security' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" && $3 == "'"$SUITE"'" {print $2}' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! have "$DEBIAN_IMAGE"; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  rootfs=$(mktemp -d /tmp/litemedsam-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  mirror=$(debian_mirror)
  log "debootstrap $SUITE from $mirror"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >/dev/null
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "imported $DEBIAN_IMAGE"
fi

build() {  # build TAG DOCKERFILE [--build-arg ...]: context ops/images/
  local tag=$1 file=$2; shift 2
  if have "$tag"; then return; fi
  log "building $tag"
  docker build --quiet --network host -t "$tag" -f "ops/images/$file" "$@" ops/images >/dev/null
}

cp "$CA_BUNDLE" ops/images/site-ca.crt
trap 'rm -f ops/images/site-ca.crt' EXIT
build "$PYTHON_IMAGE" python.Dockerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"
build "$REDIS_IMAGE" redis.Dockerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"
build "$FLOWER_IMAGE" flower.Dockerfile --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"

echo "PYTHON_IMAGE=$PYTHON_IMAGE"
echo "REDIS_IMAGE=$REDIS_IMAGE"
echo "FLOWER_IMAGE=$FLOWER_IMAGE"
