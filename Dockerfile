# syntax=docker/dockerfile:1
#
# The ferflow image. One image for everything ferflow runs on a cluster:
#   - the BentoML inference server (default command; charts/ferflow-inference deploys it),
#   - the Kubeflow pipeline components (their `base_image`),
#   - the retraining CronJob (`ferflow pipeline submit`).
# A separate serving-only image (no TensorFlow) would be smaller, but the server loads the
# exported model without TensorFlow anyway, and one image means one build, one scan and
# one tag to promote; so there is no Dockerfile.serving.
#
# Build:  docker build -t ferflow/ferflow:0.1.0 .
# Run:    docker run --rm -p 3000:3000 --read-only --tmpfs /tmp ferflow/ferflow:0.1.0

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: resolve exactly what uv.lock pins into /opt/venv --------------------------------
FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.8
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first: this layer is reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --compile-bytecode
# Then the package itself, installed as a wheel (not editable) into the same venv: the core
# library, its adapters (components, pipelines, serving) and the reference model.
COPY README.md ./
COPY ferflow/ ferflow/
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/
COPY models/reference/model.onnx models/reference/model.onnx
RUN uv sync --frozen --no-dev --no-editable --compile-bytecode

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 ferflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin ferflow
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Everything runs from the installed wheel (`bentoml serve serving.service:FERService` imports
# it from the venv); the reference model inside it is served when no other model is configured.
# HOME and caches point at /tmp: the root filesystem is read-only in the Helm chart and
# /tmp is an emptyDir there. `ferflow serve` binds 127.0.0.1 unless told otherwise; in the
# image FERFLOW_HOST=0.0.0.0 makes it listen on every interface, so `docker run -p` reaches it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    MPLCONFIGDIR=/tmp/matplotlib \
    FERFLOW_HOST=0.0.0.0
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=2)"]
CMD ["ferflow", "serve", "--port", "3000"]
