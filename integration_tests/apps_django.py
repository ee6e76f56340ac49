"""A one-module Django project served through Django's ASGI handler.

Settings are configured in code when this module is first imported, and only if
nothing configured Django before; ``LOGGING_CONFIG=None`` keeps Django away from the
process's logging setup. The module is its own URLconf. Import it only from the tests
that need Django: Django's settings are process-wide once configured.
"""

from __future__ import annotations

import json

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="uvicorn-testserver-tests-only",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()


def hello(request: HttpRequest) -> JsonResponse:
    """A sync view (Django runs it in a worker thread under ASGI)."""
    return JsonResponse({"hello": request.GET.get("name", "django"), "method": request.method})


async def async_hello(request: HttpRequest) -> JsonResponse:
    """An async view, run on the server's event loop."""
    return JsonResponse({"async": True, "path": request.path})


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"received": json.loads(request.body)}, status=201)


def boom(request: HttpRequest) -> HttpResponse:
    raise LookupError("django view lost its data")


urlpatterns = [
    path("hello/", hello),
    path("async/", async_hello),
    path("echo/", echo),
    path("boom/", boom),
]

from django.core.asgi import get_asgi_application  # noqa: E402 - needs the settings above

application = get_asgi_application()
