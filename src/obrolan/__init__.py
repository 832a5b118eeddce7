"""obrolan: an end-to-end encrypted messenger whose server cannot read, keep or analyse chats."""

__version__ = "0.1.0"
