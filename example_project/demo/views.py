"""The example project's pages: an index, chat rooms over WebSocket, a seat map over
Server-Sent Events and the favicon.

Every view is a plain sync Django view: publishing is one call, from any code.
"""

import secrets

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.staticfiles import finders
from django.db import transaction
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from django_broadcast import broadcast

from .models import Message, Seat, seat_changes

#: The rooms the room list always shows; any other slug is a room too.
ROOMS = ["lobby", "django", "random"]
HISTORY = 50  # messages shown on joining a room


def index(request: HttpRequest) -> HttpResponse:
    """The home page: what the demo shows and where."""
    return render(request, "demo/index.html", {"backend": broadcast.backend.__class__.__name__})


def favicon(request: HttpRequest) -> FileResponse:
    """``/favicon.ico``, for browsers that ask for it whatever the page says."""
    path = finders.find("demo/favicon.svg")
    assert isinstance(path, str)
    return FileResponse(open(path, "rb"), content_type="image/svg+xml")


# Chat -------------------------------------------------------------------------------


def chat_name(request: HttpRequest) -> str:
    """The name the user chats under: the username, or the one picked for the session."""
    if request.user.is_authenticated:
        return request.user.get_username()
    return request.session.get("chat_name", "")


def rooms(request: HttpRequest) -> HttpResponse:
    """The list of rooms."""
    used = Message.objects.order_by().values_list("room", flat=True).distinct()
    names = ROOMS + sorted(set(used) - set(ROOMS))
    return render(request, "demo/rooms.html", {"rooms": names})


# views-room-start
def room(request: HttpRequest, room: str) -> HttpResponse:
    """A room: its latest messages, then the page goes live from the newest one."""
    channel = f"chat.{room}"
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


# views-room-end


@require_POST
def pick_name(request: HttpRequest, room: str) -> HttpResponse:
    """Remember the name a visitor picked for this session."""
    name = " ".join(request.POST.get("name", "").split())[:40]
    if not name:
        return HttpResponseBadRequest("pick a name: it cannot be empty")
    request.session["chat_name"] = name
    return redirect("room", room=room)


# views-post-start
@require_POST
def post_message(request: HttpRequest, room: str) -> HttpResponse:
    """Save a message, then publish it to everyone in the room."""
    name = chat_name(request)
    text = request.POST.get("text", "").strip()[:500]
    if not name:
        return HttpResponseBadRequest("pick a name first")
    if not text:
        return HttpResponseBadRequest("write something")
    message = Message.objects.create(room=room, author=name, text=text)
    event = broadcast.publish(f"chat.{room}", {"author": name, "text": text})
    if event is not None:  # None only inside a transaction, sent at its commit
        Message.objects.filter(pk=message.pk).update(event_id=event.id)
    if request.headers.get("X-Requested-With") == "fetch":
        return HttpResponse(status=204)  # the page receives the message over its socket
    return redirect(reverse("room", args=[room]))  # without JavaScript


# views-post-end


# Seats ------------------------------------------------------------------------------


def seat_holder(request: HttpRequest, *, create: bool = False) -> str:
    """The visitor's seat token (made on first use): seats taken with it are theirs."""
    holder = request.session.get("seat_holder", "")
    if not holder and create:
        holder = request.session["seat_holder"] = secrets.token_hex(8)
    return holder


def seat_states(holder: str) -> dict[str, str]:
    """Each seat's state for this visitor: ``free``, ``taken`` or ``mine``."""
    return {
        label: "free" if not taken_by else "mine" if taken_by == holder else "taken"
        for label, taken_by in Seat.objects.values_list("label", "taken_by")
    }


def seats(request: HttpRequest) -> HttpResponse:
    """The seat map; it follows the ``seats`` channel live over Server-Sent Events."""
    holder = seat_holder(request)
    states = seat_states(holder)
    rows: dict[str, list[tuple[str, str]]] = {}
    for label, state in states.items():
        rows.setdefault(label[0], []).append((label, state))
    return render(request, "demo/seats.html", {"rows": rows.values(), "holder": holder})


def seat_state(request: HttpRequest) -> JsonResponse:
    """Every seat's state, for a page that (re)connects."""
    return JsonResponse(seat_states(seat_holder(request)))


def _answer(request: HttpRequest, ok: bool, message: str) -> HttpResponse:
    if request.headers.get("X-Requested-With") == "fetch":
        # Always 200: a lost race is an answer, not an error in the browser's console.
        return JsonResponse({"ok": ok, "message": message, "holder": seat_holder(request)})
    (messages.success if ok else messages.error)(request, message)
    return redirect("seats")


# views-take-start
@require_POST
def take_seat(request: HttpRequest, label: str) -> HttpResponse:
    """Take a free seat, or give back one's own; the database decides who wins.

    The conditional UPDATE changes the row only while the seat is free, so of two
    people taking one seat at the same moment exactly one gets ``1`` row back.
    """
    seat = get_object_or_404(Seat, label=label)
    holder = seat_holder(request, create=True)
    if seat.taken_by == holder:
        changed = Seat.objects.filter(label=label, taken_by=holder).update(
            taken_by="", taken_at=None
        )
        message = f"You gave back seat {label}."
    else:
        changed = Seat.objects.filter(label=label, taken_by="").update(
            taken_by=holder, taken_at=timezone.now()
        )
        message = f"Seat {label} is yours." if changed else f"Sorry, seat {label} was just taken."
    if changed:
        # QuerySet.update() sends no post_save: publish through the seat's stream.
        seat_changes.publish(Seat.objects.get(label=label), "updated", "default")
    return _answer(request, bool(changed), message)


# views-take-end


@staff_member_required
@require_POST
def reset_seats(request: HttpRequest) -> HttpResponse:
    """Free every seat (staff only); each save is published by the seat's stream."""
    with transaction.atomic():
        for seat in Seat.objects.exclude(taken_by=""):
            seat.taken_by, seat.taken_at = "", None
            seat.save()
    return _answer(request, True, "Every seat is free again.")
