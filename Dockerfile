# The image of the compose fleet and of the Kubernetes manifests: katyusha
# (with its control plane and `python -m katyusha.kubernetes`), nonna and
# sim-backend in one venv, with the placement and kubernetes extras.
# The project and its dependencies come from a wheelhouse built on the host
# (`make wheelhouse`), so the build needs no network. BASE_IMAGE is any image
# with Python 3.11 and its venv module: python:3.11-slim by default, a local
# Debian bookworm image where no registry is reachable (docs/containers.md).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/katyusha/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The wheels are bind-mounted, not copied, so they take no room in the image.
# Only the list of their checksums is copied: a build cache keys a RUN on its
# text, not on what is mounted, so the list is what makes a changed wheelhouse
# rebuild the layers below, and the check proves the mount matches it.
# Dependencies first: that layer is reused until they change.
COPY build/wheelhouse/deps/SHA256SUMS /opt/katyusha-wheels/deps.sha256
RUN --mount=type=bind,source=build/wheelhouse/deps,target=/wheels \
    cd /wheels && sha256sum --quiet --check /opt/katyusha-wheels/deps.sha256 \
 && python3 -m venv /opt/katyusha \
 && pip install --no-index --no-cache-dir --disable-pip-version-check /wheels/*.whl

COPY build/wheelhouse/katyusha/SHA256SUMS /opt/katyusha-wheels/katyusha.sha256
RUN --mount=type=bind,source=build/wheelhouse/katyusha,target=/wheels \
    cd /wheels && sha256sum --quiet --check /opt/katyusha-wheels/katyusha.sha256 \
 && pip install --no-index --no-cache-dir --disable-pip-version-check --no-deps /wheels/*.whl \
 && katyusha --help >/dev/null && nonna --help >/dev/null && sim-backend --help >/dev/null \
 && python -c "import katyusha.control.plane, katyusha.kubernetes.discovery"

USER 65534:65534
CMD ["katyusha", "--help"]
