# The one image of every pipeline task, the KServe predictor and the chart's retraining hooks.
# Build (CPU):  docker build -t <registry>/medens:<version> .
# Build (CUDA): docker build --build-arg VARIANT=cuda -t <registry>/medens:<version>-cuda .
#               (the chart uses image.tag + image.gpuTagSuffix, "-cuda", when predictor.gpu > 0)
# `make image` builds it with podman from a local wheelhouse (scripts/image.sh).
# Every Python package is installed at the version of requirements.lock (pip constraints) into a
# virtual environment of its own (/opt/venv), so nothing the base image ships (python:3.11-slim's
# `wheel`, Debian's python3 packages) is mixed in, and the build fails if anything installed there
# differs from the lock. Nothing is downloaded at run time.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
# cpu: torch/torchvision from PyTorch's CPU index (small); cuda: PyPI's CUDA build (with nvidia-* wheels)
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Where pip finds every package; empty: PyPI (and TORCH_INDEX_URL for the cpu variant). A wheelhouse
# mounted at build time: PIP_SOURCE="--no-index --find-links /wheels" (podman build -v DIR:/wheels:ro).
ARG PIP_SOURCE=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /opt/medens
# 1. every dependency (the slow, large layer), from the lock and pyproject.toml only, so a change of
#    medens' own code rebuilds nothing below
COPY requirements.lock pyproject.toml ./
COPY scripts/check_lock.py ./scripts/
RUN set -eux; \
    case "${VARIANT}" in \
      cpu) torch_source="${PIP_SOURCE:---index-url ${TORCH_INDEX_URL}}" ;; \
      cuda) torch_source="${PIP_SOURCE}" ;; \
      *) echo "VARIANT must be cpu or cuda" >&2; exit 1 ;; \
    esac; \
    python3 -m venv /opt/venv; \
    pip install ${PIP_SOURCE} -c requirements.lock pip setuptools; \
    pip install ${torch_source} -c requirements.lock torch torchvision; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/dependencies.txt; \
    pip install ${PIP_SOURCE} -c requirements.lock -r /tmp/dependencies.txt; \
    rm /tmp/dependencies.txt
# 2. medens itself, then the check that everything installed is the lock's
COPY README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN set -eux; \
    pip install ${PIP_SOURCE} --no-build-isolation --no-deps -c requirements.lock .; \
    python scripts/check_lock.py requirements.lock; \
    rm -rf build src/*.egg-info; \
    python -c "import medens, torch; print('medens', medens.__version__, 'torch', torch.__version__)"; \
    echo "medens:x:10001:10001:medens:/tmp:/usr/sbin/nologin" >> /etc/passwd; \
    echo "medens:x:10001:" >> /etc/group
ENV PYTHONPATH=/opt/medens HOME=/tmp MPLCONFIGDIR=/tmp
USER 10001:10001
EXPOSE 8080
# the chart's InferenceService runs the same command with its model name and port
CMD ["medens", "serve", "--model-dir", "/mnt/models", "--http-port", "8080"]
