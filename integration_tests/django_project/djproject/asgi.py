"""Channels routing: HTTP through Django, WebSockets to the notes consumer."""

import django
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

django.setup()
http = get_asgi_application()

from notes.consumers import NotesConsumer  # noqa: E402 - after django.setup()

application = ProtocolTypeRouter({"http": http, "websocket": URLRouter([path("ws/notes/", NotesConsumer.as_asgi())])})
