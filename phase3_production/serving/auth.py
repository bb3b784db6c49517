"""Who may change the service's state: a bearer token from the environment, compared in constant time.

Predictions are public; ``POST /v1/feedback`` is not, because it writes: its
labels set live accuracy, and an anonymous client sending wrong labels could
drive it to zero and page whoever watches the accuracy alert.  So:

* the token comes from the environment variable ``API_TOKEN`` (in
  Kubernetes, the Secret ``ml60-api-token``, key ``api-token``), never from
  a file in the image or the repository;
* clients send ``Authorization: Bearer <token>`` (RFC 6750);
* no token configured means the route is **refused** (403), not open: a
  missing Secret must not silently turn authentication off;
* a missing or wrong token is 401 with ``WWW-Authenticate: Bearer``, which
  tells the client which scheme to use;
* the comparison is ``hmac.compare_digest``: its time does not depend on
  where the first differing byte is, so response times leak nothing about
  the token a byte at a time (``==`` stops at the first difference).
"""

from __future__ import annotations

import hmac

from phase3_production.serving.config import Secret
from phase3_production.serving.errors import ApiError

REALM = 'Bearer realm="ml60"'


def require_token(authorization: str | None, expected: Secret | None) -> None:
    """Return if ``authorization`` (the header's value) carries the expected token; raise the 403/401 otherwise."""
    if expected is None:
        raise ApiError(403, "auth_not_configured",
                       "this route changes the service's state and the service has no API token configured, so it "
                       "is refused; set the environment variable API_TOKEN (in Kubernetes: the Secret "
                       "ml60-api-token, key api-token) and send 'Authorization: Bearer <token>'")
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "this route needs 'Authorization: Bearer <token>'",
                       {"WWW-Authenticate": REALM})
    if not hmac.compare_digest(token.strip().encode(), expected.reveal().encode()):
        raise ApiError(401, "unauthorized", "the bearer token is not valid",
                       {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
