"""Falcon: the routes tests/integration/test_frameworks.py checks byte for byte."""

from __future__ import annotations

import falcon
from fw_common import SEND_FILE, digest, stream


class Json:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"hello": "world", "framework": "falcon"}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = req.get_media()


class Form:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.get_media()  # application/x-www-form-urlencoded
        resp.media = dict(form)


class Upload:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        for part in req.get_media():
            if part.name == "file":
                resp.media = {"name": part.filename, **digest(part.stream.read())}


class Raw:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = digest(req.bounded_stream.read())


class Stream:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/octet-stream"
        resp.stream = stream()


class File:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/x-python"
        resp.set_stream(open(SEND_FILE, "rb"), SEND_FILE.stat().st_size)  # noqa: SIM115

    on_head = on_get


app = falcon.App()
app.req_options.auto_parse_form_urlencoded = False
app.add_route("/json", Json())
app.add_route("/form", Form())
app.add_route("/upload", Upload())
app.add_route("/raw", Raw())
app.add_route("/stream", Stream())
app.add_route("/file", File())
