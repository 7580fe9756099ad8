"""Models, admin and URLs of the suite's own Django app (change streams, live admin)."""
