"""The local HTTP server of ``weakseg annotate`` (Flask on werkzeug's threaded server).

Routes (every ``/api`` route needs the session token in the ``X-Weakseg-Token`` header; the page needs it as
``?token=``; the static files hold no data and need none):

* ``GET  /?token=T``                         the page
* ``GET  /api/session``                      classes, palette, image ids with status, progress, resume id, overlay
* ``GET  /api/images/<id>/image``            the image (re-encoded as PNG when the browser would not show the
                                             pixels training reads: EXIF rotation, TIFF)
* ``GET  /api/images/<id>/annotation``       {id, width, height, rle, tags, skipped, status}
* ``PUT  /api/images/<id>/annotation``       body {width, height, rle, tags} → {status, progress}
* ``POST /api/images/<id>/skip``             body {skipped: bool} → {status, progress}
* ``GET  /api/images/<id>/overlay/<layer>``  ``prediction`` | ``uncertainty`` RGBA PNG (with ``--ckpt``)

Untrusted requests stay harmless: ids are looked up in the listed image set (nothing else names a file), writes
go through :class:`~weakseg.annotate.store.LabelStore` into the output folder only, bodies over
``max_request_bytes`` are refused (413) before they are read, payloads are type-checked (400 with the reason) and a
wrong or missing token gets 403.
"""

from __future__ import annotations

import io
import secrets
from pathlib import Path

from flask import Flask, Response, abort, jsonify, request, send_file
from PIL import Image

from weakseg.annotate.store import LabelStore, rle_decode
from weakseg.utils.io import DataError

TOKEN_HEADER = "X-Weakseg-Token"
MAX_REQUEST_BYTES = 16 << 20  # a run-length coded scribble is a few kB; 16 MiB leaves room for huge, noisy ones
STATIC = Path(__file__).with_name("static")
_BROWSER_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
                     ".webp": "image/webp"}
_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _image_response(path: Path) -> Response:
    """The image as the browser should show it: the stored pixels, unrotated. Browsers apply the EXIF orientation,
    PIL (and so training) does not, so a rotated photo is re-encoded as PNG without the tag; so is any format a
    browser may not decode (TIFF)."""
    mime = _BROWSER_SUFFIXES.get(path.suffix.lower())
    try:
        with Image.open(path) as img:
            rotated = img.getexif().get(0x0112, 1) != 1
            if mime is not None and not rotated:
                return send_file(path, mimetype=mime, max_age=0)
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
    except OSError as exc:
        abort(500, description=f"{path.name}: cannot read image ({exc})")
    return Response(buf.getvalue(), mimetype="image/png")


def create_app(store: LabelStore, token: str, overlay=None, max_request_bytes: int = MAX_REQUEST_BYTES) -> Flask:
    """The Flask app serving ``store``.

    Args:
        store: the annotation folder.
        token: the session token every API request must carry.
        overlay: optional :class:`~weakseg.annotate.overlay.ModelOverlay` for the prediction/uncertainty layers.
        max_request_bytes: largest accepted request body.
    """
    app = Flask("weakseg.annotate", static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.json.sort_keys = False

    def authorised(given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8"))

    @app.before_request
    def check_token():
        if request.path.startswith("/api/") and not authorised(request.headers.get(TOKEN_HEADER)):
            return jsonify(error="missing or wrong token"), 403
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"  # the page URL carries the token
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(400)
    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    @app.errorhandler(500)
    def error(exc):
        return jsonify(error=getattr(exc, "description", str(exc))), getattr(exc, "code", 500)

    def image_path(sid: str) -> Path:
        try:
            return store.check_id(sid)
        except KeyError:
            abort(404, description=f"unknown image id {sid!r}")

    def json_body() -> dict:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # absurdly nested JSON
            body = None
        if not isinstance(body, dict):
            abort(400, description="expected a JSON object body (Content-Type: application/json)")
        return body

    @app.get("/")
    def page():
        if not authorised(request.args.get("token")):
            return Response("weakseg annotate: open the URL printed by the command (it carries the access token)\n",
                            status=403, mimetype="text/plain")
        return send_file(STATIC / "index.html", mimetype="text/html", max_age=0)

    @app.get("/api/session")
    def session():
        return jsonify(classes=list(store.meta.classes),
                       palette=[[int(v) for v in store.meta.palette[i]] for i in range(store.meta.num_classes)],
                       images=store.statuses(), progress=store.progress(), resume=store.resume_id(),
                       overlay=overlay is not None, out=str(store.out), train_command=store.train_command())

    @app.get("/api/images/<sid>/image")
    def image(sid: str):
        return _image_response(image_path(sid))

    @app.get("/api/images/<sid>/annotation")
    def get_annotation(sid: str):
        image_path(sid)
        try:
            return jsonify(store.load(sid))
        except DataError as exc:
            abort(500, description=str(exc))

    @app.put("/api/images/<sid>/annotation")
    def put_annotation(sid: str):
        image_path(sid)
        body = json_body()
        h, w = store.size(sid)
        if body.get("width") != w or body.get("height") != h:
            abort(400, description=f"width/height must be the image size {w}×{h}")
        tags = body.get("tags", [])
        if not isinstance(tags, list):
            abort(400, description="tags must be a list of class ids")
        try:
            scribble = rle_decode(body.get("rle"), h, w, store.meta.num_classes)
            return jsonify(store.save(sid, scribble, tags))
        except ValueError as exc:  # DataError included
            abort(400, description=str(exc))

    @app.post("/api/images/<sid>/skip")
    def skip(sid: str):
        image_path(sid)
        value = json_body().get("skipped")
        if not isinstance(value, bool):
            abort(400, description="skipped must be true or false")
        return jsonify(store.set_skipped(sid, value))

    @app.get("/api/images/<sid>/overlay/<layer>")
    def overlay_layer(sid: str, layer: str):
        path = image_path(sid)
        if overlay is None:
            abort(404, description="no model loaded (start weakseg annotate with --ckpt)")
        if layer not in ("prediction", "uncertainty"):
            abort(404, description="layer must be prediction or uncertainty")
        return Response(overlay.layers(sid, path)[layer], mimetype="image/png")

    return app


def serve(app: Flask, host: str = "127.0.0.1", port: int = 0):
    """A started threaded werkzeug server (``server.serve_forever()`` runs it; ``server.port`` is the bound port)."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code="-", size="-") -> None:  # one line per stroke save would drown the console
            pass

    return make_server(host, port, app, threaded=True, request_handler=QuietHandler)
