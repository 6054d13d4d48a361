# catalog-agent image: a virtual environment with the agent and its locked dependencies, the
# entrypoint wrapper, nothing else (no compilers, no pip, no caches). Runs as a numeric non-root
# user and with a read-only root filesystem (it writes only to mounted volumes).
#
#   podman build --build-arg BASE_IMAGE=localhost/debian-py:bookworm -t catalog-agent .
#
# BASE_IMAGE must have python3 with venv and CA certificates; both stages use it, so the
# virtual environment's python links to the same interpreter at run time.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Tools to build the agent's wheel, pinned with hashes, in a venv of their own (not shipped).
COPY requirements-build.lock ./
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --quiet --no-deps --require-hashes --only-binary=:all: \
      -r requirements-build.lock
# Run-time dependencies, exactly as locked (scripts/lock-requirements): hash-checked wheels.
COPY requirements.lock ./
RUN python3 -m venv /opt/catalog-agent \
 && /opt/catalog-agent/bin/pip install --quiet --no-deps --require-hashes --only-binary=:all: \
      -r requirements.lock
# The agent itself, then trimming: botocore and boto3 ship data for every AWS service, the agent
# calls only S3 and STS (endpoints and partitions, the top-level files, stay). botocore's
# cacert.pem stays too: without certifi (not a locked dependency) it is the CA bundle that https
# endpoints are checked against when neither ca_bundle nor AWS_CA_BUNDLE is set. pip and its
# setuptools leave the venv: nothing installs anything at run time. README.md (pyproject's
# readme) is left out of the context and stood in for by an empty file: the image needs no long
# description, and README edits then do not change the image.
COPY pyproject.toml entrypoint ./
COPY catalog_agent ./catalog_agent
RUN : > README.md \
 && /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/catalog-agent/bin/pip install --quiet --no-deps --no-index /wheels/*.whl \
 && /opt/catalog-agent/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && cd /opt/catalog-agent/lib/python3*/site-packages \
 && find botocore/data -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts -exec rm -rf {} + \
 && find boto3/data -mindepth 1 -maxdepth 1 -type d ! -name s3 -exec rm -rf {} + \
 && test -f botocore/data/endpoints.json.gz -o -f botocore/data/endpoints.json \
 && test -d botocore/data/s3 -a -d botocore/data/sts -a -s botocore/cacert.pem \
 && install -D -m 0755 /src/entrypoint /out/usr/local/bin/entrypoint \
 && /opt/catalog-agent/bin/catalog-agent --version

FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG SOURCE=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="catalog-agent" \
      org.opencontainers.image.description="Moves a Kubernetes pipeline step's files through an S3 data catalog" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/catalog-agent /opt/catalog-agent
COPY --from=build /out/usr/local/bin/entrypoint /usr/local/bin/entrypoint
ENV PATH=/opt/catalog-agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
# Numeric, so that runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532
ENTRYPOINT ["catalog-agent"]
CMD ["--help"]
