"""Payload encryption (payloads.py) and the codec server the Temporal UI uses (server.py)."""
