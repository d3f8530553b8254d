"""kaohe: the annual assessment of leadership teams and leading cadres on Temporal."""

__version__ = "0.1.0"
