"""One error shape for every failure, and never a traceback on the wire.

``{"error": {"status": 413, "code": "body_too_large", "message": "...", "request_id": "..."}}``

The ``code`` is stable (clients branch on it), the ``message`` is for people,
and the ``request_id`` is also in the ``X-Request-ID`` header and in the
server log, so a user's complaint can be matched to the log line.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("ml60.serve")


def error_body(status: int, code: str, message: str, request_id: str | None) -> bytes:
    return json.dumps({"error": {"status": status, "code": code, "message": message,
                                 "request_id": request_id}}).encode()


def error_response(status: int, code: str, message: str, request_id: str | None, headers: dict | None = None):
    from fastapi.responses import Response

    return Response(error_body(status, code, message, request_id), status_code=status,
                    media_type="application/json", headers=headers)


class ApiError(Exception):
    """Raised by a route for a client mistake: becomes a 4xx JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
