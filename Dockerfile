# Prism gateway and workers: one image, the command picks the role.
#   docker build -t prism-gateway:latest .
#   docker run -p 8080:8080 prism-gateway:latest            # gateway, default policy
#   docker run -p 9000:9000 prism-gateway:latest \
#     prism worker --policy policies/default.yaml --model text-embed@1 --host 0.0.0.0 --port 9000
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PRISM_DATA_DIR=/app
WORKDIR /app

# dependencies from the committed lock first (a layer that survives code edits), then Prism itself
COPY requirements/serve.txt ./requirements/serve.txt
RUN pip install pip==26.3 && pip install -r requirements/serve.txt
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
