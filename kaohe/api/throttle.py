"""The voting page's refusals, counted per client address (issue 20, docs/threat-model.md).

The voting routes are public: a made-up token costs kaohe a look-up and an audit row, so a
flood of them would fill the audit table. Past `per_minute` refusals in a moving minute an
address is answered 429 at once, with neither, until its window frees. Accepted votes never
count, so a meeting room behind one address votes on while a mistyped token or two is
refused. The count is this process's (the `limits` package's memory storage): several API
processes each allow as much.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

_NAMESPACE = "vote-refusals"


class RefusalThrottle:
    def __init__(self, per_minute: int) -> None:
        self._item = RateLimitItemPerMinute(per_minute) if per_minute > 0 else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, address: str) -> int | None:
        """Seconds until the address is heard again, or None if it is heard now."""
        if self._item is None or self._limiter.test(self._item, _NAMESPACE, address):
            return None
        reset, _ = self._limiter.get_window_stats(self._item, _NAMESPACE, address)
        return max(1, math.ceil(reset - time.time()))

    def refused(self, address: str) -> None:
        if self._item is not None:
            self._limiter.hit(self._item, _NAMESPACE, address)
