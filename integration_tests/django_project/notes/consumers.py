from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from notes.models import Note


class NotesConsumer(AsyncJsonWebsocketConsumer):
    """Answers {"count": n} with the number of notes in the database, and joins a group through the layer."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("notes", self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard("notes", self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        if content.get("broadcast"):
            await self.channel_layer.group_send("notes", {"type": "notes.message", "text": content["broadcast"]})
            return
        await self.send_json({"count": await database_sync_to_async(Note.objects.count)()})

    async def notes_message(self, event) -> None:
        await self.send_json({"broadcast": event["text"]})
