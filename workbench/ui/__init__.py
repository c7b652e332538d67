"""Notebook widgets."""
from workbench.ui.chat_widget import ChatWidget

__all__ = ["ChatWidget"]
