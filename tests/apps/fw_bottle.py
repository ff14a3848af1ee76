"""Bottle: the routes tests/integration/test_frameworks.py checks byte for byte."""

from __future__ import annotations

import bottle
from fw_common import SEND_FILE, digest, stream

app = bottle.Bottle()
bottle.BaseRequest.MEMFILE_MAX = 4 << 20


@app.get("/json")
def get_json():
    return {"hello": "world", "framework": "bottle"}


@app.post("/json")
def post_json():
    return bottle.request.json


@app.post("/form")
def form():
    return dict(bottle.request.forms.decode())


@app.post("/upload")
def upload():
    uploaded = bottle.request.files.get("file")
    return {"name": uploaded.raw_filename, **digest(uploaded.file.read())}


@app.post("/raw")
def raw():
    return digest(bottle.request.body.read())


@app.get("/stream")
def streamed():
    bottle.response.content_type = "application/octet-stream"
    return stream()


@app.get("/file")
def file():
    return bottle.static_file(SEND_FILE.name, root=str(SEND_FILE.parent), mimetype="text/x-python")
