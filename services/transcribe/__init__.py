"""The transcribe service: speech to timed text (faster-whisper offline, Gemini with a key).

Run it with ``python -m services.transcribe``; see ``settings.py`` for its environment variables.
"""
