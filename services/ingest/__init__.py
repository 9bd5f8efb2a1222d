"""The ingest service: stores upload streams (size and SHA-256 checked) and probes media.

Run it with ``python -m services.ingest``; see ``settings.py`` for its environment variables.
"""
