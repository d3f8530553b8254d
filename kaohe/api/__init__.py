"""kaohe's HTTP API in front of Temporal (FastAPI): authenticated, authorized per unit, and
the only way an action reaches a unit from outside (kaohe/assertions.py)."""
