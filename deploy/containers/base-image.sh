#!/usr/bin/env bash
# Make the local base image once: Debian bookworm (minbase) with python3 and venv,
# from Debian's packages with debootstrap, imported into podman. It stands in for
# python:3.11-slim where no container registry is reachable (docs/containers.md).
# Usage: deploy/containers/base-image.sh [IMAGE]    (default localhost/katyusha-base:bookworm)
set -euo pipefail
image=${1:-localhost/katyusha-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$image"; then
  echo "base image $image exists"
  exit 0
fi
root=$(mktemp -d /var/tmp/katyusha-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -20 "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Nothing an image needs: downloaded packages, package lists, docs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" --numeric-owner -c . | podman import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image" >/dev/null
echo "base image $image built in $((SECONDS - start)) s ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
