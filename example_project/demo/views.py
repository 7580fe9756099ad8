"""The example project's home page and favicon; the chat rooms are in ``chat.py``
and the seat map in ``seats.py``."""

from django.contrib.staticfiles import finders
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import render

from django_broadcast import broadcast


def index(request: HttpRequest) -> HttpResponse:
    """The home page: what the demo shows and where."""
    return render(request, "demo/index.html", {"backend": broadcast.backend.__class__.__name__})


def favicon(request: HttpRequest) -> FileResponse:
    """``/favicon.ico``, for browsers that ask for it whatever the page says."""
    path = finders.find("demo/favicon.svg")
    assert isinstance(path, str)
    return FileResponse(open(path, "rb"), content_type="image/svg+xml")
