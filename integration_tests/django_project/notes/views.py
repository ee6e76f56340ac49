import asyncio
import threading

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from notes.models import Note


def page(request: HttpRequest) -> HttpResponse:
    return render(request, "notes/page.html")


def notes_sync(request: HttpRequest) -> JsonResponse:
    """A sync view: Django runs it in a worker thread."""
    return JsonResponse({"notes": list(Note.objects.order_by("id").values_list("text", flat=True))})


async def notes_async(request: HttpRequest) -> JsonResponse:
    """An async view, on the server's event loop, with the async ORM."""
    return JsonResponse({"notes": [note.text async for note in Note.objects.order_by("id")]})


@csrf_exempt
def add_note(request: HttpRequest) -> JsonResponse:
    note = Note.objects.create(text=request.POST["text"])
    return JsonResponse({"id": note.id}, status=201)


#: Set by a test once it has read the first chunk; the stream goes on only then.
release_stream = threading.Event()


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    """One chunk, then (once the test has read it and set `release_stream`) two more."""

    async def chunks():
        yield "chunk 0\n"
        released = await asyncio.to_thread(release_stream.wait, 30)
        yield f"chunk 1 (released: {released})\n"
        yield "chunk 2\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")
