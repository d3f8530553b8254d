"""Pydantic models of every workflow input, output, update, signal and query."""
