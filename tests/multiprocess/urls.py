"""No HTTP views: the servers only route WebSocket and SSE."""

urlpatterns: list[object] = []
