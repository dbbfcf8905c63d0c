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
# Then the package itself, installed as a wheel (not editable) into the same venv.
COPY README.md ./
COPY ferflow/ ferflow/
RUN uv sync --frozen --no-dev --no-editable --compile-bytecode

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 ferflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin ferflow
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The BentoML service and the pipeline definitions are imported from /app (PYTHONPATH),
# e.g. `bentoml serve serving.service:FERService`.
COPY serving/ serving/
COPY components/ components/
COPY pipelines/ pipelines/
# The committed reference model, served when no registry model is configured.
COPY models/ models/
# HOME and caches point at /tmp: the root filesystem is read-only in the Helm chart and
# /tmp is an emptyDir there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    FERFLOW_MODEL=/app/models/reference/model.onnx \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=2)"]
CMD ["ferflow", "serve", "--port", "3000"]
