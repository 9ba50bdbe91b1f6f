"""Presentation: figures, chapter text, the reproduction summary, the book builder and the explorer.
It reads records that the application wrote; nothing below it imports it."""
