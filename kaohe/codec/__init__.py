"""Payload encryption (payloads.py); the Temporal UI decodes through kaohe's API (kaohe/api/
codec.py), as the user."""
