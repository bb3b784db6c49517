# STUB until milestone p3-serve (days 46-50).
#
# The production image - multi-stage, serving-only dependencies (ONNX Runtime,
# NumPy, Pillow, FastAPI, uvicorn; no torch), non-root user, HEALTHCHECK - is
# built in phase 3.  Until then this file only packages the curriculum and
# prints the milestone list, so that `docker build .` already means something.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ml60/ ml60/
CMD ["python", "-m", "ml60", "help"]
