# Before: encode/broadcaster.
from typing import Any

from broadcaster import Broadcast

broadcast = Broadcast("redis://127.0.0.1:6379/0")


async def startup() -> None:  # on the application's startup
    await broadcast.connect()


async def shutdown() -> None:  # on its shutdown
    await broadcast.disconnect()


async def send_message(text: str) -> None:
    await broadcast.publish(channel="chatroom", message=text)


async def listen(websocket: Any) -> None:
    async with broadcast.subscribe(channel="chatroom") as subscriber:
        async for event in subscriber:
            await websocket.send_text(event.message)
