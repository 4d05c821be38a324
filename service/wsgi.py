"""Gunicorn target ``service.wsgi:app``: imported in each worker after fork."""

from service import create_app

app = create_app()
