"""What the test servers expose besides the broadcast consumers: a policy with a trap,
and a diagnostics view that says what the server process holds."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.http import HttpRequest, JsonResponse

from django_broadcast import broadcast
from django_broadcast.auth import PatternPolicy
from django_broadcast.events import is_reserved

_patterns = PatternPolicy()


def policy(user: Any, channel: str, action: str) -> bool:
    """The pattern policy, except that channels named ``boom-*`` make it raise."""
    if channel.startswith("boom-"):
        raise RuntimeError(f"the policy failed on {channel}")
    return _patterns(user, channel, action)


async def diagnostics(request: HttpRequest) -> JsonResponse:
    """The process's tasks, the user channels its hub subscribes, and drops."""
    channels = sorted(c for c in broadcast._hub().channels if not is_reserved(c))
    return JsonResponse(
        {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "channels": channels,
            "dropped": broadcast.dropped,
        }
    )
