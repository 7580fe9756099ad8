"""The example project's URLs."""

from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("favicon.ico", views.favicon),
    path("chat/", views.rooms, name="rooms"),
    # urls-chat-start
    path("chat/<slug:room>/", views.room, name="room"),
    path("chat/<slug:room>/post/", views.post_message, name="post_message"),
    # urls-chat-end
    path("chat/<slug:room>/name/", views.pick_name, name="pick_name"),
    path("seats/", views.seats, name="seats"),
    path("seats/state/", views.seat_state, name="seat_state"),
    path("seats/reset/", views.reset_seats, name="reset_seats"),
    path("seats/<str:label>/", views.take_seat, name="take_seat"),
    path("admin/", admin.site.urls),
]
