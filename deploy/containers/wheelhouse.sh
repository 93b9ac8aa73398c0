#!/usr/bin/env bash
# Build the wheelhouse the image installs from: the project's wheel in
# build/wheelhouse/katyusha/, every dependency's wheel in build/wheelhouse/deps/,
# with the extras the image's processes need (WHEEL_EXTRAS, default
# placement,kubernetes: `katyusha control` places pods with ortools, and the
# Kubernetes manifests run `python -m katyusha.kubernetes` from the same image).
# Dependencies are downloaded for Linux, CPython 3.11 and the container's
# architecture (this machine's unless WHEEL_ARCH says: x86_64, aarch64), so a
# macOS host builds a wheelhouse a Linux image can use.
# Usage: deploy/containers/wheelhouse.sh [PYTHON]    (default .venv/bin/python)
set -euo pipefail
python=${1:-.venv/bin/python}
out=build/wheelhouse
arch=${WHEEL_ARCH:-$(uname -m)}
case "$arch" in arm64) arch=aarch64 ;; amd64) arch=x86_64 ;; esac
extras=${WHEEL_EXTRAS:-placement,kubernetes}
platforms=(--platform "manylinux2014_$arch" --platform "linux_$arch")
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done  # glibc of bookworm: 2.36
rm -rf "$out"
mkdir -p "$out/katyusha" "$out/deps"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# pip's own chatter goes to a log, shown when a step fails.
"$python" -m pip wheel --disable-pip-version-check --no-deps --wheel-dir "$out/katyusha" . >"$log" 2>&1 || {
  cat "$log"; exit 1; }
wheel=$(echo "$out"/katyusha/*.whl)
"$python" -m pip download --disable-pip-version-check --only-binary=:all: \
  "${platforms[@]}" --python-version 3.11 --implementation cp --dest "$out/deps" "$wheel${extras:+[$extras]}" \
  >"$log" 2>&1 || { cat "$log"; exit 1; }
rm -f "$out"/deps/katyusha-*.whl
# The Dockerfile copies these lists: they change exactly when the wheels do.
for dir in "$out/katyusha" "$out/deps"; do (cd "$dir" && sha256sum ./*.whl >SHA256SUMS); done
echo "wheelhouse: $(ls "$out"/deps/*.whl | wc -l) dependency wheels ($(du -sh "$out/deps" | cut -f1)) + $(cd "$out/katyusha" && ls ./*.whl)"
