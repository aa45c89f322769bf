# The serving image: onnxruntime behind REST + gRPC + metrics. No TensorFlow, no PyTorch.
#   docker build -t ghcr.io/modelbridge/modelbridge:0.1.0 .        (same as --target serve)
# The converter image (TensorFlow/Keras/PyTorch on top of this one) is Dockerfile.converter, a separate
# file so that neither builder can ever build it on the way to this image: the legacy builder
# (DOCKER_BUILDKIT=0, Debian's docker and docker-compose 1.29) builds every stage before the target.
# No `# syntax=` line: BuildKit would fetch that frontend from Docker Hub; the built-in one is enough.

# The /ui bundle and onnxruntime-web's wasm files, built from the npm packages into server/ui/vendor/.
FROM node:20-slim AS ui
WORKDIR /src/clients/js
COPY clients/js/package.json clients/js/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY clients/js/src ./src
COPY clients/js/scripts ./scripts
COPY server/ui /src/server/ui
RUN npm run build

# Everything the server needs, in one venv that the serving stage copies whole: no wheel files, no pip
# cache and no build tools end up in the image. Few layers after the big ones: the stand-in engine's vfs
# storage copies the whole file system for each.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a source change rebuilds only the layers after this.
COPY pyproject.toml ./
RUN python -m venv /opt/modelbridge \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
 && /opt/modelbridge/bin/pip install -r requirements.txt "setuptools>=69" wheel
# The whole context: .dockerignore lets in only pyproject.toml, README.md, server/, converters/ and the
# clients/js sources the ui stage builds from.
COPY . ./
COPY --from=ui /src/server/ui/vendor ./server/ui/vendor
RUN /opt/modelbridge/bin/pip install --no-deps --no-build-isolation . \
 && /opt/modelbridge/bin/modelbridge --help >/dev/null

FROM python:3.11-slim AS serve
# onnxruntime's telemetry is off, and HOME is a real, writable directory: otherwise onnxruntime prints
# "Failed to persist telemetry device ID" (a coloured plain-text line) into the JSON log stream at every
# start when it cannot write its device ID under ~ (a read-only HOME or root filesystem).
ENV PATH=/opt/modelbridge/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/home/modelbridge \
    ORT_DISABLE_TELEMETRY=1
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/modelbridge \
      --shell /usr/sbin/nologin modelbridge \
 && mkdir /models && chown modelbridge:modelbridge /models
WORKDIR /home/modelbridge
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["modelbridge"]
CMD ["serve", "--host", "0.0.0.0", "--model-repository", "/models"]
USER 10001
# Last: a source change rebuilds only this layer of the serving stage.
COPY --from=build /opt/modelbridge /opt/modelbridge
