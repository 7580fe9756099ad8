"""The servers' one HTTP view; WebSocket and SSE are routed in asgi.py."""

from django.urls import path

from .views import diagnostics

urlpatterns = [path("diagnostics/", diagnostics)]
