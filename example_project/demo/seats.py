"""The seat map: its page follows the ``seats`` channel over Server-Sent Events with a
plain ``EventSource`` (``static/demo/seats.js``); taking a seat is a sync view in which
the database decides who wins."""

import secrets

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from .models import Seat


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


def seat_map(request: HttpRequest) -> HttpResponse:
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


@require_POST
def take_seat(request: HttpRequest, label: str) -> HttpResponse:
    """Take a free seat, or give back one's own; the database decides who wins.

    The conditional UPDATE changes the row only while the seat is free, so of two
    people taking one seat at the same moment exactly one gets ``1`` row back.
    """
    seat = get_object_or_404(Seat, label=label)
    holder = seat_holder(request, create=True)
    with transaction.atomic():
        if seat.taken_by == holder:
            mine = Seat.objects.filter(label=label, taken_by=holder)
            changed = mine.update(taken_by="", taken_at=None)
            message = f"You gave back seat {label}."
        else:
            free = Seat.objects.filter(label=label, taken_by="")
            changed = free.update(taken_by=holder, taken_at=timezone.now())
            message = (
                f"Seat {label} is yours." if changed else f"Sorry, seat {label} was just taken."
            )
        if changed:
            # QuerySet.update() sends no post_save: save the row as it now is, so that
            # the seat's change stream and the live admin publish it at the commit.
            seat.refresh_from_db()
            seat.save()
    return _answer(request, bool(changed), message)


@staff_member_required
@require_POST
def reset_seats(request: HttpRequest) -> HttpResponse:
    """Free every seat (staff only); each save is published by the seat's stream."""
    with transaction.atomic():
        for seat in Seat.objects.exclude(taken_by=""):
            seat.taken_by, seat.taken_at = "", None
            seat.save()
    return _answer(request, True, "Every seat is free again.")
