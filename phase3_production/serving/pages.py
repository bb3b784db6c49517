"""The pages a person opens: the demo at ``/`` and the live view at ``/dashboard``.

Plain HTML, CSS and JavaScript from ``serving/static/``: no build step, no
framework, nothing fetched from another site, so the pages work offline and in
a cluster without internet.  They call only the public API (``/v1/predict``,
``/v1/model``, ``/v1/samples``, ``/v1/stats``), exactly as any client would.

Served with a strict Content-Security-Policy: scripts and styles only from
this service, images only from it or from the page itself (``data:`` for the
samples, ``blob:`` for the preview of a dropped file), no framing by other
sites.  A page that tried to load a script from a CDN would be blocked by the
browser, and the browser tests would see it.

Only the files named in :data:`STATIC_TYPES` are served, each read once, when first asked for:
``/static/{name}`` is a lookup in a dictionary, never a path on disk, so no
name can reach outside the folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from phase3_production.serving.errors import ApiError

STATIC_DIR = Path(__file__).with_name("static")
PAGES = {"/": "demo.html", "/dashboard": "dashboard.html"}
STATIC_TYPES = {"demo.js": "text/javascript", "dashboard.js": "text/javascript", "charts.js": "text/javascript",
                "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",     # a new image brings new pages: the browser asks again (304s are cheap)
}
pages = APIRouter(include_in_schema=False)


@lru_cache(maxsize=None)
def static_file(name: str) -> bytes:
    """The bytes of a shipped file, read once."""
    return (STATIC_DIR / name).read_bytes()


def page_response(name: str, media_type: str) -> Response:
    return Response(static_file(name), media_type=media_type, headers=SECURITY_HEADERS)


@pages.get("/")
async def demo_page():
    return page_response(PAGES["/"], "text/html; charset=utf-8")


@pages.get("/dashboard")
async def dashboard_page():
    return page_response(PAGES["/dashboard"], "text/html; charset=utf-8")


@pages.get("/static/{name}")
async def static(name: str):
    if name not in STATIC_TYPES:
        raise ApiError(404, "not_found", f"no static file named {name!r}")
    return page_response(name, f"{STATIC_TYPES[name]}; charset=utf-8")
