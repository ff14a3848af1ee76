"""Routes of the test project; the views mirror the other frameworks' apps."""

from __future__ import annotations

import json

from django.contrib import admin
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from fw_common import SEND_FILE, digest, stream


def json_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return JsonResponse(json.loads(request.body), safe=False)
    return JsonResponse({"hello": "world", "framework": "django"})


def token(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"csrf": get_token(request)})


def protected_form(request: HttpRequest) -> HttpResponse:
    """CSRF-protected (the middleware checks the cookie and the form token)."""
    return JsonResponse(request.POST.dict())


@csrf_exempt
def form(request: HttpRequest) -> HttpResponse:
    return JsonResponse(request.POST.dict())


@csrf_exempt
def upload(request: HttpRequest) -> HttpResponse:
    uploaded = request.FILES["file"]
    return JsonResponse({"name": uploaded.name, **digest(uploaded.read())})


@csrf_exempt
def raw(request: HttpRequest) -> HttpResponse:
    return JsonResponse(digest(request.body))


def streamed(request: HttpRequest) -> HttpResponse:
    return StreamingHttpResponse(stream(), content_type="application/octet-stream")


def file(request: HttpRequest) -> HttpResponse:
    return FileResponse(open(SEND_FILE, "rb"), content_type="text/x-python")


async def _many_sleeps() -> int:
    import asyncio

    await asyncio.gather(*(asyncio.sleep(0.05) for _ in range(200)))
    return 200


def async_island(request: HttpRequest) -> HttpResponse:
    """A sync view that awaits 200 concurrent 50 ms sleeps through async_to_sync, then uses
    the database connection (Django refuses that while an event loop runs in its thread)."""
    from asgiref.sync import async_to_sync
    from django.db import connection

    slept = async_to_sync(_many_sleeps)()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"slept": slept, "db": one})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("json", csrf_exempt(json_view)),
    path("island", async_island),
    path("token", token),
    path("protected", protected_form),
    path("form", form),
    path("upload", upload),
    path("raw", raw),
    path("stream", streamed),
    path("file", file),
]
