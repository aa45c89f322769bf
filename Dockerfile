# syntax=docker/dockerfile:1
# Serving image (default target): `docker build -t ghcr.io/modelbridge/modelbridge:0.1.0 .`
#   No TensorFlow, no PyTorch: onnxruntime, FastAPI/uvicorn and grpcio only.
# Converter image: `docker build --target converter -t ghcr.io/modelbridge/modelbridge-converter:0.1.0 .`

# The /ui bundle and onnxruntime-web's wasm files: built from the npm packages into server/ui/vendor/.
FROM node:20-slim AS ui
WORKDIR /src/clients/js
COPY clients/js/package.json clients/js/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY clients/js ./
COPY server/ui /src/server/ui
RUN npm run build

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY converters ./converters
COPY --from=ui /src/server/ui/vendor ./server/ui/vendor
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin modelbridge \
 && mkdir /models && chown modelbridge /models
USER 10001
WORKDIR /tmp
ENTRYPOINT ["modelbridge"]

# Converters: TensorFlow/Keras/PyTorch on top of the serving install. torch==2.13.0 from the default index
# is a CUDA build of several GB: pass your PyTorch CPU wheel index as TORCH_INDEX to get the CPU build.
FROM runtime AS converter
ARG TORCH_INDEX=""
USER root
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$(ls /wheels/*.whl)[convert]"
USER 10001
CMD ["--help"]

FROM runtime AS serve
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["serve", "--host", "0.0.0.0", "--model-repository", "/models"]
