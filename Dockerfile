# One image for the API and the workers. CPU torch by default; the GPU worker in
# docker-compose.yml builds with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

WORKDIR /app
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml ./
COPY cnnviz cnnviz
COPY schemas schemas
COPY service service
COPY workers workers
RUN pip install --no-cache-dir .

# Celery refuses to be comfortable as root, and nothing here needs it.
RUN useradd --system --home /app cnnviz
USER cnnviz

EXPOSE 8000
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000"]
