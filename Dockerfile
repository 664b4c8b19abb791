# One image for the API and the workers. CPU torch by default; the GPU workers in
# docker-compose.yml build with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (torch 2.14 is published for cu126 and cu130; cu124 stops at torch 2.6).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# HOME must be writable (matplotlib, torch and pip write under it); the caches live on a
# volume (docker-compose.yml), so torchvision weights are downloaded once, not per container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/cnnviz \
    MPLCONFIGDIR=/var/cache/cnnviz/matplotlib \
    TORCH_HOME=/var/cache/cnnviz/torch

# Celery refuses to be comfortable as root, and nothing here needs it.
RUN useradd --create-home --home-dir /home/cnnviz --uid 10001 cnnviz \
    && mkdir -p /var/cache/cnnviz/matplotlib /var/cache/cnnviz/torch /var/lib/cnnviz/models \
        /var/lib/cnnviz/compile-cache \
    && chown -R cnnviz:cnnviz /var/cache/cnnviz /var/lib/cnnviz

WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml ./
COPY client/pyproject.toml client/
COPY server/pyproject.toml server/
COPY cnnviz cnnviz
COPY cnnviz_client cnnviz_client
COPY schemas schemas
COPY service service
COPY workers workers
# The core, the client with the contract and the `cnnviz` command, then the service and its
# workers (which depend on both: all three named here, so none is looked for on an index).
RUN pip install --no-cache-dir . ./client './server[server]'

USER 10001
VOLUME ["/var/cache/cnnviz"]
EXPOSE 8000
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000"]
