"""The p3-serve service: an ONNX Runtime model behind FastAPI, with no torch anywhere.

One idea per module:

* ``config``     - every knob, read from the environment (12-factor style);
* ``model``      - load the ONNX file only after checking its sha256, read its metadata;
* ``images``     - turn untrusted upload bytes into a normalised tensor, or a clear 4xx error;
* ``decoding``   - decode uploads off the event loop, priced from the header, within a memory budget;
* ``auth``       - the bearer token that state-changing routes (``/v1/feedback``) require;
* ``batcher``    - gather concurrent requests into one ONNX Runtime call;
* ``limits``     - request ids, the body-size limit and the body-read deadline, counted on the stream;
* ``metrics``    - the Prometheus counters and histograms;
* ``errors``     - one JSON error shape, never a traceback;
* ``routes``     - one module-level function per route, reading ``request.app.state``;
* ``app``        - ``create_app()``: builds the shared state and wires the routes and the error handlers.
"""
