"""ONNX Runtime sessions, configured once for the whole phase (torch-free: the service uses it too)."""

from __future__ import annotations

from pathlib import Path


def onnx_session(onnx_path: Path, threads: int | None = None, *,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), spinning: bool = False):
    """An ONNX Runtime session with all graph optimisations on.

    ``threads``: size of the intra-op pool (``None``: ONNX Runtime's default,
    one per core).  ``spinning``: ONNX Runtime's pool threads busy-wait after
    each call by default, which saves microseconds when calls come back to
    back but steals the cores from everything else in the process - the
    PyTorch engines interleaved in the benchmark, the HTTP server in p3-serve.
    We switch it off by default (``make p3-onnx ARGS=--ort-spinning`` shows
    the difference).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(onnx_path), options, providers=list(providers))
