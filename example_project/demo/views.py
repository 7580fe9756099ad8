"""A page that shows the demo channel live, and a plain sync view that publishes."""

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from django_broadcast import broadcast

CHANNEL = "demo"


def index(request: HttpRequest) -> HttpResponse:
    """The page, with the latest events where the broker keeps history."""
    keeps_history = broadcast.features.history
    events = broadcast.history(CHANNEL, limit=20) if keeps_history else []
    return render(
        request,
        "demo/index.html",
        {"channel": CHANNEL, "events": events, "keeps_history": keeps_history},
    )


@require_POST
def publish(request: HttpRequest) -> HttpResponse:
    """Publish the posted text, as any sync view or signal would."""
    text = request.POST.get("text", "").strip()
    if not text:
        return HttpResponseBadRequest("write something")
    broadcast.publish(CHANNEL, {"text": text[:500], "at": timezone.now()})
    if request.headers.get("X-Requested-With") == "fetch":
        return HttpResponse(status=204)
    return redirect("index")
