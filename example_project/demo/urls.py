"""The example project's URLs."""

from django.contrib import admin
from django.urls import path

from . import chat, seats, views

urlpatterns = [
    path("", views.index, name="index"),
    path("favicon.ico", views.favicon),
    # urls-chat-start
    path("chat/", chat.rooms, name="rooms"),
    path("chat/<slug:room>/", chat.room, name="room"),
    path("chat/<slug:room>/name/", chat.pick_name, name="pick_name"),
    path("chat/<slug:room>/post/", chat.post_message, name="post_message"),
    # urls-chat-end
    path("seats/", seats.seat_map, name="seats"),
    path("seats/state/", seats.seat_state, name="seat_state"),
    path("seats/reset/", seats.reset_seats, name="reset_seats"),
    path("seats/<str:label>/", seats.take_seat, name="take_seat"),
    path("admin/", admin.site.urls),
]
