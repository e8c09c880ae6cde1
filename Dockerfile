# The one image of every pipeline task and of the KServe predictor (MEDENS_IMAGE).
# Build: docker build -t <registry>/medens:<version> .   (nothing is downloaded at run time)
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/medens
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN pip install . && useradd --uid 1000 --create-home medens
ENV PYTHONPATH=/opt/medens
USER 1000
EXPOSE 8080
CMD ["medens", "serve", "--model-dir", "/mnt/models", "--http-port", "8080"]
