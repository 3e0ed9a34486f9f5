# Prism's two images, from one file (multi-stage targets):
#
#   docker build --target gateway -t prism-gateway:slim .    # the slim gateway: remote models only
#   docker build -t prism-gateway:latest .                   # full (the last stage): local models,
#                                                            # workers, the demo policy
#
# The slim gateway installs requirements/slim.txt (the core distribution: no torch, no
# transformers, no CUDA libraries) and fronts KServe / Triton / OpenAI-compatible servers,
# `prism worker`s included. The full image installs requirements/serve.txt and runs local models:
#   docker run -p 8080:8080 prism-gateway:latest            # gateway, default policy
#   docker run -p 9000:9000 prism-gateway:latest \
#     prism worker --policy policies/default.yaml --model text-embed@1 --host 0.0.0.0 --port 9000
#   docker run -p 8080:8080 -v $PWD/policies:/app/policies prism-gateway:slim \
#     prism serve --policy /app/policies/my-remote-models.yaml --host 0.0.0.0 --port 8080
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PRISM_DATA_DIR=/app
WORKDIR /app
RUN pip install pip==26.3

# --- the slim gateway --------------------------------------------------------------------------
FROM base AS gateway
# dependencies from the committed lock first (a layer that survives code edits), then Prism itself
COPY requirements/slim.txt ./requirements/slim.txt
RUN pip install -r requirements/slim.txt
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY kernels ./kernels
COPY prism ./prism
COPY policies ./policies
RUN pip install --no-deps --no-build-isolation .
EXPOSE 8080
# policies/compose.yaml routes to the compose file's workers; mount or pass your own policy
CMD ["prism", "serve", "--policy", "/app/policies/compose.yaml", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/app"]

# --- the full image: local models (torch, transformers, open_clip, triton, onnxruntime) ---------
FROM base AS full
COPY requirements/serve.txt ./requirements/serve.txt
RUN pip install -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY backends ./backends
COPY kernels ./kernels
COPY prism ./prism
COPY policies ./policies
RUN pip install --no-deps --no-build-isolation .

# the demo CLIP and catalogue are built into the image, so the default policy serves offline
RUN prism demo build --out /app/models

EXPOSE 8080
CMD ["prism", "serve", "--policy", "/app/policies/default.yaml", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/app"]
