"""greenserve's own answers (http_answers.py): whole, each with its own id, the cache bounded."""

from __future__ import annotations

import re

from greenserve.worker import apps
from greenserve.worker.protocols import http_answers
from greenserve.worker.protocols.http import HttpConnection
from greenserve.worker.protocols.http_parser import fast_head
from tests.helpers import ScriptedSocket, in_process_handler, parse_responses

REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def _connection() -> tuple[HttpConnection, ScriptedSocket]:
    sock = ScriptedSocket([])
    return HttpConnection(in_process_handler(apps.hello), sock, ("127.0.0.1", 40000)), sock


def test_each_shed_answer_is_whole_with_its_own_id():
    connection, sock = _connection()
    head = fast_head(REQUEST, connection.handler.base_environ)
    for _ in range(3):
        connection.shed(head, "queue_time")
    responses = parse_responses(bytes(sock.sent))
    assert [r.status for r in responses] == [503, 503, 503]
    ids = set(re.findall(rb"X-Request-ID: (\S+)\r\n", bytes(sock.sent)))
    assert len(ids) == 3
    for response in responses:
        assert (
            response.body
            == b"503 Service Unavailable: " + http_answers.SHED["queue_time"].encode() + b"\n"
        )
        assert response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"
        assert int(response.headers["content-length"]) == len(response.body)


def test_answers_with_many_details_stay_right_and_the_cache_bounded():
    connection, sock = _connection()
    for number in range(http_answers._PARTS_MAX + 50):
        sock.sent.clear()
        connection.send_error(400, f"bad thing {number}")
        (response,) = parse_responses(bytes(sock.sent))
        assert response.status == 400
        assert response.body == f"400 Bad Request: bad thing {number}\n".encode()
    assert len(http_answers._PARTS) <= http_answers._PARTS_MAX
