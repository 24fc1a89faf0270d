# structsearch service image: API, workers, migrations and dashboard (one image, different commands).
#   docker build -t structsearch .                                   # CUDA-capable torch (GPU workers)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t structsearch .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch/torchvision first, at the versions pinned in pyproject.toml, in their own layer: code
# changes then rebuild in seconds. The index decides CUDA (PyPI's default wheels) or CPU-only.
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==2.14.1" "torchvision==0.29.1"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY structsearch ./structsearch
COPY api ./api
COPY studies ./studies
# Editable install: `structsearch db upgrade` finds alembic/ next to the package.
RUN pip install -e ".[service]"

RUN useradd --create-home --uid 10001 structsearch \
    && mkdir -p /data/home /data/artifacts /data/datasets \
    && chown -R structsearch /data
USER structsearch
ENV STRUCTSEARCH_HOME=/data/home \
    STRUCTSEARCH_ARTIFACTS=/data/artifacts

EXPOSE 8000 8080
CMD ["structsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
