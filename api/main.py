"""The ASGI entry point that uvicorn loads (`api.main:app`)."""

from api.app import create_server_app

app = create_server_app()
