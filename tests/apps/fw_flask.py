"""Flask: the routes tests/integration/test_frameworks.py checks byte for byte."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request, send_file
from fw_common import SEND_FILE, digest, stream

app = Flask(__name__)
logger = logging.getLogger("fw_flask")


@app.get("/json")
def get_json():
    return jsonify(hello="world", framework="flask")


@app.post("/json")
def post_json():
    return jsonify(request.get_json())


@app.post("/form")
def form():
    return jsonify(request.form.to_dict())


@app.post("/upload")
def upload():
    uploaded = request.files["file"]
    return jsonify(name=uploaded.filename, **digest(uploaded.read()))


@app.post("/raw")
def raw():
    return jsonify(digest(request.get_data()))


@app.get("/stream")
def streamed():
    return Response(stream(), mimetype="application/octet-stream")


@app.get("/file")
def file():
    return send_file(SEND_FILE, mimetype="text/x-python")


@app.get("/log")
def log():
    logger.warning("flask app says %s", "hi")
    return "logged"


@app.get("/fail")
def fail():
    raise RuntimeError("flask view failed")
