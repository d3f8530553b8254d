"""kaohe's own counters, kept by the activities; served by the worker (kaohe/metrics.py).

Counts only: never a ballot's marks, a recipient or talk content.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

BALLOTS_INGESTED = Counter(
    "kaohe_ballots_ingested",
    "Ballots stored by this worker, by how they came (update: record_ballots; "
    "import: a bulk batch registered).",
    ["source"],
    registry=REGISTRY,
)
BALLOT_SHEETS_INGESTED = Counter(
    "kaohe_ballot_sheets_ingested",
    "Ballot sheets (one per rater) stored by this worker.",
    ["source"],
    registry=REGISTRY,
)
NOTIFICATION_DELIVERIES = Counter(
    "kaohe_notification_deliveries",
    "Notification delivery attempts by channel and outcome "
    "(sent; failed: to be retried; dead_lettered: the last attempt failed).",
    ["channel", "outcome"],
    registry=REGISTRY,
)
