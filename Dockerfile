# structsearch service image: API, workers, migrations and dashboard (one image, different commands).
#   docker build -t structsearch .                                   # CUDA-capable torch (GPU workers)
#   docker build --build-arg PIP_INDEX_URL=<your index> -t structsearch .   # pip's own setting, passed through
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch/torchvision first, at the versions pinned in pyproject.toml, in their own layer: code
# changes then rebuild in seconds. Which index pip uses is pip's own configuration (PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, given as build args when set); the index decides CUDA or CPU-only wheels.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
# (an empty value, as compose passes for an unset variable, means: not set)
RUN [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    pip install "torch==2.14.1" "torchvision==0.29.1"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY structsearch ./structsearch
COPY api ./api
COPY studies ./studies
# Editable install: `structsearch db upgrade` finds alembic/ next to the package.
RUN [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    pip install -e ".[service]"

RUN useradd --create-home --uid 10001 structsearch \
    && mkdir -p /data/home /data/artifacts /data/datasets \
    && chown -R structsearch /data
USER structsearch
ENV STRUCTSEARCH_HOME=/data/home \
    STRUCTSEARCH_ARTIFACTS=/data/artifacts

EXPOSE 8000 8080
CMD ["structsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
