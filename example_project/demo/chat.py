"""Chat rooms: a room's page shows its latest messages and goes live over WebSocket
(``static/demo/chat.js``); a message is posted to a plain sync view that saves it,
then publishes it on ``chat.<room>``."""

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_broadcast import BroadcastUnavailable, broadcast

from .models import Message

#: The rooms the room list always shows; any other slug is a room too.
ROOMS = ["lobby", "django", "random"]
HISTORY = 50  # messages shown on joining a room


def chat_name(request: HttpRequest) -> str:
    """The name the user chats under: the username, or the one picked for the session."""
    if request.user.is_authenticated:
        return request.user.get_username()
    return request.session.get("chat_name", "")


def channel_of(room: str) -> str:
    """The channel of ``room``; a slug longer than a message's room can be is no room."""
    if len(room) > Message._meta.get_field("room").max_length:
        raise Http404("no such room: its name is too long")
    return f"chat.{room}"


def rooms(request: HttpRequest) -> HttpResponse:
    """The list of rooms."""
    used = Message.objects.order_by().values_list("room", flat=True).distinct()
    names = ROOMS + sorted(set(used) - set(ROOMS))
    return render(request, "demo/rooms.html", {"rooms": names})


def room(request: HttpRequest, room: str) -> HttpResponse:
    """A room: its latest messages, then the page goes live from the newest one."""
    channel = channel_of(room)
    since = None
    if broadcast.features.history:
        events = broadcast.history(channel, limit=HISTORY)
        messages = [{"id": e.id, **e.data} for e in events if e.type == "message"]
        since = events[-1].id if events else None  # the page resumes after it
    else:  # the broker keeps no history: the database does
        latest = Message.objects.filter(room=room).order_by("-created", "-pk")[:HISTORY]
        messages = [
            {"id": m.event_id, "author": m.author, "text": m.text} for m in reversed(latest)
        ]
    config = {"channel": channel, "since": since, "name": chat_name(request)}
    return render(
        request,
        "demo/room.html",
        {"room": room, "messages": messages, "config": config, "name": config["name"]},
    )


@require_POST
def pick_name(request: HttpRequest, room: str) -> HttpResponse:
    """Remember the name a visitor picked for this session."""
    channel_of(room)
    name = " ".join(request.POST.get("name", "").split())[:40]
    if not name:
        return HttpResponseBadRequest("pick a name: it cannot be empty")
    request.session["chat_name"] = name
    return redirect("room", room=room)


@require_POST
def post_message(request: HttpRequest, room: str) -> HttpResponse:
    """Save a message, then publish it to everyone in the room."""
    channel = channel_of(room)
    name = chat_name(request)
    text = request.POST.get("text", "").strip()[:500]
    if not name:
        return HttpResponseBadRequest("pick a name first")
    if not text:
        return HttpResponseBadRequest("write something")
    message = Message.objects.create(room=room, author=name, text=text)
    try:
        event = broadcast.publish(channel, {"author": name, "text": text})
    except BroadcastUnavailable:
        return HttpResponse(
            "Your message is saved, but it could not be sent live (the broker is "
            "unavailable): the others see it when they reload.",
            status=503,
            content_type="text/plain",
        )
    if event is not None:  # None only inside a transaction, sent at its commit
        Message.objects.filter(pk=message.pk).update(event_id=event.id)
    if request.headers.get("X-Requested-With") == "fetch":
        return HttpResponse(status=204)  # the page receives the message over its socket
    return redirect("room", room=room)  # without JavaScript
