from datetime import datetime, timezone

from icn_p2p.core.clock import ms_from_datetime
from icn_p2p.identity import NodeKey

NOW = ms_from_datetime(datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc))
MONTH = "2025-03"
PREV = "2025-02"
# fixed seeds keep hypothesis examples reproducible and cheap
KEYS = [NodeKey(bytes([i + 1]) * 32) for i in range(4)]
RETENTION_MS = 90 * 86_400_000
