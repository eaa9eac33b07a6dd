"""``GET /v1/docs``: the browsable API reference, served entirely from installed packages.

Swagger UI's scripts and styles come from the ``swagger-ui-bundle`` package and are served by
this blueprint, so the page renders without any external host (flask-smorest's own page loads
them from a CDN). The page's script is a file too, so it runs under a strict
Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, render_template, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

#: Our own files for the page: its start-up script and the favicon.
OWN_ASSETS = Path(__file__).parent / "docs_assets"

#: What the page may load: only this app's own files (and Swagger UI's inline SVG images).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)

bp = Blueprint("polysms_docs", __name__, template_folder="docs_assets")


@bp.get("/docs")
def docs_page() -> Response:
    """The Swagger UI page for ``openapi.json``."""
    html = render_template(
        "polysms_docs.html",
        spec_url=url_for("polysms-api-docs.openapi_json"),
        asset=lambda name: url_for("polysms_docs.swagger_asset", filename=name),
        own=lambda name: url_for("polysms_docs.own_asset", filename=name),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@bp.get("/docs/swagger-ui/<path:filename>")
def swagger_asset(filename: str) -> Response:
    """Swagger UI's own files, from the installed ``swagger-ui-bundle`` package."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)


@bp.get("/docs/assets/<path:filename>")
def own_asset(filename: str) -> Response:
    """The page's start-up script and favicon."""
    return send_from_directory(OWN_ASSETS, filename, max_age=86400)
