"""The p3-serve service: an ONNX Runtime model behind FastAPI, with no torch anywhere.

One idea per module:

* ``config``     - every knob, read from the environment (12-factor style);
* ``model``      - load the ONNX file only after checking its sha256, read its metadata;
* ``images``     - turn untrusted upload bytes into a normalised tensor, or a clear 4xx error;
* ``batcher``    - gather concurrent requests into one ONNX Runtime call;
* ``limits``     - request ids and the body-size limit, counted on the stream;
* ``metrics``    - the Prometheus counters and histograms;
* ``errors``     - one JSON error shape, never a traceback;
* ``app``        - the routes, wired together in ``create_app()``.
"""
