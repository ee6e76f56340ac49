from django.urls import path
from notes import views

urlpatterns = [
    path("", views.page),
    path("notes/sync/", views.notes_sync),
    path("notes/async/", views.notes_async),
    path("notes/add/", views.add_note),
    path("stream/", views.stream),
]
