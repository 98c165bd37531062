"""The ASGI entry point that uvicorn loads (`api.main:app`)."""

from api.app import create_app

app = create_app()
