#!/usr/bin/env bash
# Unpack Debian's prometheus package into build/prometheus/ (promtool for the
# config test, the server for the image) and build the monitoring profile's
# image from it on BASE_IMAGE, once (skipped when the image exists).
# Usage: deploy/containers/prometheus-image.sh BASE_IMAGE [IMAGE]
#        deploy/containers/prometheus-image.sh --unpack-only
set -euo pipefail
out=build/prometheus
if [ ! -x "$out/usr/bin/promtool" ]; then
  rm -rf "$out" && mkdir -p "$out/deb"
  # apt-get download fetches the .deb alone: nothing is installed or started on the host.
  (cd "$out/deb" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; })
  dpkg-deb -x "$out"/deb/prometheus_*.deb "$out"
  rm -rf "$out/deb" "$out/usr/share/doc" "$out/lib" "$out/etc/init.d" "$out/etc/default" "$out/etc/logrotate.d"
fi
[ "${1:-}" = --unpack-only ] && exit 0
base=${1:?usage: prometheus-image.sh BASE_IMAGE [IMAGE]}
image=${2:-localhost/katyusha-prometheus:local}
if podman image exists "$image"; then
  echo "prometheus image $image exists"
  exit 0
fi
podman build --quiet --layers=false --build-arg BASE_IMAGE="$base" -t "$image" \
  -f deploy/containers/prometheus.Containerfile "$out" >/dev/null
echo "prometheus image $image built ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
