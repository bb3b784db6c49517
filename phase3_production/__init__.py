"""Phase 3, days 41-60: ONNX export, a FastAPI service, Kubernetes, monitoring."""
