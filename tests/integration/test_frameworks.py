"""The users' apps: Flask, Django, Falcon and Bottle under --protocol http, with a real client.

Each framework app (tests/apps/fw_*.py) answers the same routes; every test checks bytes end to
end (sizes and SHA-256 of what the app received, the exact bytes of what it sent).
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import requests

from tests.helpers import serving_http

FRAMEWORKS = {
    "flask": "fw_flask:app",
    "django": "fw_django.wsgi:application",
    "falcon": "fw_falcon:app",
    "bottle": "fw_bottle:app",
}
PAYLOAD = random.Random(12).randbytes(1 << 20)


def expected_digest(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture(scope="module", params=sorted(FRAMEWORKS))
def app(request):
    with serving_http(FRAMEWORKS[request.param], "--max-body", "8m") as server:
        server.started()
        host, port = server.address
        with requests.Session() as session:  # keep-alive across the requests of a test
            session.base = f"http://{host}:{port}"
            session.framework = request.param
            session.server = server
            yield session
        assert "app_error" not in server.output, server.output[-3000:]


class TestFrameworks:
    """JSON, forms, uploads (multipart and chunked), streaming and files, in each framework."""

    def test_json_get_and_post(self, app):
        response = app.get(app.base + "/json", timeout=10)
        assert response.status_code == 200
        assert response.json() == {"hello": "world", "framework": app.framework}
        document = {"list": [1, 2, 3], "text": "caf\u00e9", "nested": {"ok": True}}
        response = app.post(app.base + "/json", json=document, timeout=10)
        assert response.status_code == 200 and response.json() == document

    def test_urlencoded_form(self, app):
        fields = {"name": "Ada Lovelace", "note": "a=b&c d", "empty": ""}
        response = app.post(app.base + "/form", data=fields, timeout=10)
        assert response.status_code == 200 and response.json() == fields

    def test_multipart_file_upload(self, app):
        data = PAYLOAD[:300_000]
        files = {"file": ("blob.bin", data, "application/octet-stream")}
        response = app.post(app.base + "/upload", files=files, timeout=20)
        assert response.status_code == 200
        assert response.json() == {"name": "blob.bin", **expected_digest(data)}

    def test_chunked_upload_arrives_whole(self, app):
        """requests sends a generator with Transfer-Encoding: chunked."""

        def pieces():
            for start in range(0, len(PAYLOAD), 65536):
                yield PAYLOAD[start : start + 65536]

        response = app.post(app.base + "/raw", data=pieces(), timeout=20)
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        assert response.status_code == 200 and response.json() == expected_digest(PAYLOAD)

    def test_sized_upload(self, app):
        response = app.post(app.base + "/raw", data=PAYLOAD, timeout=20)
        assert response.status_code == 200 and response.json() == expected_digest(PAYLOAD)

    def test_streaming_response(self, app):
        from tests.apps.fw_common import STREAM_CHUNK, STREAM_CHUNKS

        response = app.get(app.base + "/stream", stream=True, timeout=20)
        assert response.status_code == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert response.raw.read() == STREAM_CHUNK * STREAM_CHUNKS

    def test_send_file(self, app):
        from tests.apps.fw_common import SEND_FILE

        response = app.get(app.base + "/file", timeout=20)
        assert response.status_code == 200
        assert response.content == SEND_FILE.read_bytes()
        assert int(response.headers["Content-Length"]) == SEND_FILE.stat().st_size

    def test_head_of_a_file_has_no_body(self, app):
        response = app.head(app.base + "/file", timeout=10)
        assert response.status_code == 200 and response.content == b""
        # the connection is still in step: the next request on it is answered whole
        assert app.get(app.base + "/json", timeout=10).json()["framework"] == app.framework


@pytest.fixture(scope="module")
def django_server():
    with serving_http(FRAMEWORKS["django"]) as server:
        server.started()
        yield server


class TestDjango:
    """The Django pieces users meet first: the admin login page and CSRF-protected forms."""

    def base(self, server) -> str:
        host, port = server.address
        return f"http://{host}:{port}"

    def test_admin_login_page(self, django_server):
        response = requests.get(self.base(django_server) + "/admin/login/", timeout=10)
        assert response.status_code == 200
        assert 'name="csrfmiddlewaretoken"' in response.text and "csrftoken" in response.cookies

    def test_post_with_csrf_token_is_accepted(self, django_server):
        with requests.Session() as session:
            token = session.get(self.base(django_server) + "/token", timeout=10).json()["csrf"]
            response = session.post(
                self.base(django_server) + "/protected",
                data={"csrfmiddlewaretoken": token, "field": "value"},
                timeout=10,
            )
        assert response.status_code == 200
        assert json.loads(response.text) == {"csrfmiddlewaretoken": token, "field": "value"}

    def test_post_without_csrf_cookie_is_refused(self, django_server):
        response = requests.post(
            self.base(django_server) + "/protected", data={"field": "value"}, timeout=10
        )
        assert response.status_code == 403


class TestDjangoLogging:
    """Django's own log handlers do not make every record appear twice."""

    def test_debug_console_handler_does_not_double_each_record(self):
        with serving_http(
            FRAMEWORKS["django"], env={"DJANGO_SETTINGS_MODULE": "fw_django.settings_debug"}
        ) as server:
            server.started()
            host, port = server.address
            response = requests.get(f"http://{host}:{port}/no-such-page", timeout=10)
            assert response.status_code == 404
            server.wait_event("Not Found: /no-such-page", timeout=10)
            # Django's handlers run before the record propagates: an echo comes first
            records = [e for e in server.events if "/no-such-page" in str(e.get("event"))]
            echoes = [e for e in server.find("app_output") if "/no-such-page" in e["line"]]
            assert len(records) == 1 and echoes == [], (records, echoes)
