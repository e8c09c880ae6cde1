# The one image of every pipeline task, the KServe predictor and the chart's retraining Job.
# Build (CPU):  docker build -t <registry>/medens:<version> .
# Build (CUDA): docker build --build-arg VARIANT=cuda -t <registry>/medens:<version>-cuda .
# Every Python package is installed at the version of requirements.lock (pip constraints), and the
# build fails if anything installed differs from the lock. Nothing is downloaded at run time.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
# cpu: torch/torchvision from PyTorch's CPU index (small); cuda: PyPI's CUDA build (with nvidia-* wheels)
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/medens
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/check_lock.py ./scripts/
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN set -eux; \
    case "${VARIANT}" in \
      cpu) torch_index="--index-url https://download.pytorch.org/whl/cpu" ;; \
      cuda) torch_index="" ;; \
      *) echo "VARIANT must be cpu or cuda" >&2; exit 1 ;; \
    esac; \
    pip install -c requirements.lock pip setuptools; \
    pip install ${torch_index} -c requirements.lock torch torchvision; \
    pip install --no-build-isolation -c requirements.lock .; \
    python scripts/check_lock.py requirements.lock; \
    groupadd --gid 10001 medens; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin medens
ENV PYTHONPATH=/opt/medens HOME=/tmp MPLCONFIGDIR=/tmp
USER 10001:10001
EXPOSE 8080
# the chart's InferenceService runs the same command with its model name and port
CMD ["medens", "serve", "--model-dir", "/mnt/models", "--http-port", "8080"]
