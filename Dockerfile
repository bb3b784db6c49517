# syntax=docker/dockerfile:1
# p3-serve: the CIFAR-10 classifier as a small, non-root, torch-free image.
#
#   make p3-onnx                                  # writes runs/p3-onnx/ (the model and its manifest)
#   docker build -t ml60-serve .
#   docker run --rm -p 8000:8000 ml60-serve       # then: curl -F file=@cat.png localhost:8000/v1/predict
#
# Another model: mount it and point MODEL_DIR at it (-v $PWD/my-model:/models/x -e MODEL_DIR=/models/x).
# SageMaker runs `docker run IMAGE serve` with PORT=8080: the entrypoint accepts both.

# ---- stage 1: build a virtual environment with the serving dependencies only
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY phase3_production/serving/requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# ---- stage 2: the runtime image: the venv, the service code, the model; no compilers, no pip cache
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/models/p3-onnx \
    HOST=0.0.0.0 \
    PORT=8000
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ml60
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY phase3_production/__init__.py phase3_production/manifest.py phase3_production/
COPY phase3_production/serving/ phase3_production/serving/
COPY --chown=10001:10001 runs/p3-onnx/manifest.json runs/p3-onnx/model.onnx runs/p3-onnx/model.int8.onnx \
     runs/p3-onnx/reference.json runs/p3-onnx/samples.json runs/p3-onnx/model_card.json \
     runs/p3-onnx/MODEL_CARD.md /models/p3-onnx/
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "phase3_production.serving"]
