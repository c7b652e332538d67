"""Notebook widgets."""
from .chat_widget import ChatWidget

__all__ = ["ChatWidget"]
