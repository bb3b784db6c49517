"""Two cloud providers' container contracts, kept by the same image: SageMaker's and Vertex AI's.

A managed endpoint runs *your* container and talks to it over HTTP, on terms
the provider sets.  The service keeps both sets of terms, so the one image runs
on a laptop, in Kubernetes, on SageMaker and on Vertex AI:

===================  ==========================================  =============================================
                     Amazon SageMaker (real-time endpoint)       Google Vertex AI (custom container)
===================  ==========================================  =============================================
how it starts        ``docker run IMAGE serve``                   the image's ENTRYPOINT (or containerSpec.command)
port                 8080 (``SAGEMAKER_BIND_TO_PORT`` when set)   ``AIP_HTTP_PORT`` (8080 unless ports are given)
health               ``GET /ping``: 200 when ready               ``GET $AIP_HEALTH_ROUTE``: 200 when ready
prediction           ``POST /invocations``, the image bytes,     ``POST $AIP_PREDICT_ROUTE``, JSON
                     Content-Type as the caller sent it           ``{"instances": [...], "parameters": {...}}``
                     (``application/x-image``, ``image/jpeg``)    in, ``{"predictions": [...]}`` out; binary data
                                                                  as ``{"b64": "<base64>"}``
request size         6 MB per invocation                          1.5 MB per request
===================  ==========================================  =============================================

Sources: SageMaker's "Custom Inference Code with Hosting Services",
https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html;
Vertex AI's "Custom container requirements for inference",
https://cloud.google.com/vertex-ai/docs/predictions/custom-container-requirements.

What is here: which port to listen on (:func:`listen_port`), the Vertex
routes read from the environment (:func:`vertex_routes`), and the Vertex
request and answer (:func:`vertex_instances`).  The routes themselves are in
``serving/routes.py`` (``/ping``, ``/invocations``) and ``serving/app.py``
(the Vertex routes, added where the environment names them).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

SAGEMAKER_PORT = 8080
DEFAULT_PORT = 8000


def listen_port(argv: list[str], env: Mapping[str, str]) -> int:
    """The port to listen on: where the platform that started the container will send requests.

    1. Vertex AI sets ``AIP_HTTP_PORT``: that port.
    2. Started as ``serve`` (SageMaker's ``docker run IMAGE serve``): 8080, or
       ``SAGEMAKER_BIND_TO_PORT`` where SageMaker sets it (several containers
       in one endpoint).  The image's own ``PORT`` does not apply: SageMaker
       sends to 8080 whatever the image says.
    3. Otherwise ``PORT``, default 8000 (a laptop, Kubernetes, the tests).
    """
    for name, value in (("AIP_HTTP_PORT", env.get("AIP_HTTP_PORT")),
                        ("SAGEMAKER_BIND_TO_PORT", env.get("SAGEMAKER_BIND_TO_PORT") if "serve" in argv else None),
                        ("PORT", None if "serve" in argv else env.get("PORT"))):
        if value:
            try:
                port = int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a port number") from None
            if not 0 < port < 65536:
                raise ValueError(f"{name}={port} is not a port number (1-65535)")
            return port
    return SAGEMAKER_PORT if "serve" in argv else DEFAULT_PORT


def vertex_routes(env: Mapping[str, str]) -> tuple[str, str] | None:
    """``(health route, predict route)`` where Vertex AI names them (``AIP_HEALTH_ROUTE``, ``AIP_PREDICT_ROUTE``).

    Vertex sets both, to paths like
    ``/v1/endpoints/ENDPOINT/deployedModels/MODEL:predict``; they are only known
    when the container starts, so the routes are added then.  ``None`` when
    the container does not run on Vertex AI.
    """
    health, predict = env.get("AIP_HEALTH_ROUTE", ""), env.get("AIP_PREDICT_ROUTE", "")
    if not health and not predict:
        return None
    problems = [f"{name}={value!r} must be a path starting with '/'"
                for name, value in (("AIP_HEALTH_ROUTE", health), ("AIP_PREDICT_ROUTE", predict))
                if not value.startswith("/")]
    if health == predict and not problems:
        problems.append(f"AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE are the same path ({health})")
    if problems:
        raise ValueError("refusing to start, the Vertex AI routes cannot work: " + "; ".join(problems))
    return health, predict


class InstanceError(ValueError):
    """A Vertex request whose shape is wrong; the message says which part."""


def vertex_instances(payload, max_instances: int) -> list[bytes]:
    """The image bytes of each instance of a Vertex AI request ``{"instances": [...], "parameters": {...}}``.

    An instance is an image as ``{"b64": "<base64 bytes>"}`` (Vertex AI's
    convention for binary data in JSON), or that object under a key of its
    own, ``{"image": {"b64": ...}}``, as many clients send it.  Every problem
    names the instance, so a client with a batch of 32 knows which one to fix.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InstanceError('send {"instances": [{"b64": "<base64 image>"}, ...]}')
    instances = payload["instances"]
    if not instances:
        raise InstanceError("'instances' is empty: send at least one image")
    if len(instances) > max_instances:
        raise InstanceError(f"{len(instances)} instances in one request; at most {max_instances} (MAX_BATCH_FILES)")
    images = []
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and "b64" not in instance and len(instance) == 1:
            instance = next(iter(instance.values()))          # {"image": {"b64": ...}}
        if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
            raise InstanceError(f'instance {i}: expected {{"b64": "<base64 image>"}}')
        try:
            images.append(base64.b64decode(instance["b64"], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InstanceError(f"instance {i}: 'b64' is not base64 ({exc})") from exc
    return images
