"""Notebook widgets: the chat, and the blind A/B arena of two files."""
from workbench.ui.arena_widget import ArenaWidget
from workbench.ui.chat_widget import ChatWidget

__all__ = ["ArenaWidget", "ChatWidget"]
