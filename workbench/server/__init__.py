"""llama-server-compatible and OpenAI-compatible HTTP API (see app.py)."""
from workbench.server.app import Engine, build_app

__all__ = ["Engine", "build_app"]
