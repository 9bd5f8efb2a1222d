# syntax=docker/dockerfile:1
# One image for every reelmill process; the command picks the process:
#   docker run reelmill python -m gateway            (the default)
#   docker run reelmill python -m gateway migrate    (apply the database migrations, exit)
#   docker run reelmill python -m services.ingest    (.transcode, .transcribe, .metadata)
# deploy/k8s/ runs it as uid 10001 with a read-only root filesystem and emptyDirs at /tmp and
# /scratch.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reelmill ./reelmill
COPY runtime ./runtime
COPY gateway ./gateway
COPY services ./services
# A regular (not editable) install: the venv is all the runtime stage needs. pip compiles the
# bytecode here, so nothing is written under the read-only root at run time.
RUN /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="reelmill" \
      org.opencontainers.image.description="reelmill's gateway and services (one image, the command picks the process)"
RUN groupadd --system --gid 10001 reelmill \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin reelmill
COPY --from=builder /opt/venv /opt/venv
# HOME is /tmp (an emptyDir in the pods): onnxruntime, under faster-whisper, writes ~/.cache.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /app
# Numeric, so Kubernetes can check runAsNonRoot against the image.
USER 10001:10001
EXPOSE 50051 50061 50062 50063 50064
CMD ["python", "-m", "gateway"]
