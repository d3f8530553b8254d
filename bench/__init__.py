"""Benchmarks of kaohe against the floor of the Temporal dev server, on a private stack.

Run `python -m bench floor` or `python -m bench unit`; see bench/README.md.
"""
