"""Plain Channels consumers, as existing projects write them: a chat, a worker."""

from __future__ import annotations

import os
from typing import Any

from channels.consumer import SyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from django_broadcast import broadcast


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Joins the group named in the URL; relays what a client says with group_send."""

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            self.room, {"type": "chat.message", "text": content["text"]}
        )

    async def chat_message(self, message: dict[str, Any]) -> None:
        await self.send_json({"text": message["text"], "id": message["id"]})


class ThumbnailWorker(SyncConsumer):
    """A ``runworker thumbnails`` worker: says on ``thumbnails.done`` which job it did."""

    def thumbnail_make(self, message: dict[str, Any]) -> None:
        broadcast.publish("thumbnails.done", {"job": message["job"], "pid": os.getpid()})
