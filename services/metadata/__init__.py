"""The metadata service: title, description, tags, chapters and summary from a transcript
(an extractive generator offline, Gemini with a key), and JSON shaped by a caller's schema.

Run it with ``python -m services.metadata``; see ``settings.py`` for its environment variables.
"""
