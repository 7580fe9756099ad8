# After: no connect() or disconnect(); the alias connects when first used, and
# routing.application() closes it on the server's shutdown.
from typing import Any

from django_broadcast import broadcast


async def send_message(text: str) -> None:
    await broadcast.apublish("chatroom", text)


def send_message_from_a_view(text: str) -> None:  # sync code, on commit
    broadcast.publish("chatroom", text)


async def listen(websocket: Any) -> None:
    async with broadcast.subscribe("chatroom") as subscription:
        async for event in subscription:
            await websocket.send_text(event.data)
