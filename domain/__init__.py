"""The assessment's own rules, pure: no Temporal, no I/O, no clocks (time comes in as `now`).

Workflows, activities, the CLI and the reports import it; it imports only `schemas`.
"""
