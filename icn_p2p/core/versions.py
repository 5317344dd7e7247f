"""Capability versions compared as versions: ``1.10`` > ``1.9``, ``2`` == ``2.0``."""

from __future__ import annotations

import re
from functools import lru_cache

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-+][0-9A-Za-z.\-+]*)?$")


@lru_cache(maxsize=4096)
def parse_version(text: str) -> tuple[int, ...]:
    """Numeric release parts of ``text``; trailing zeros dropped so ``2`` == ``2.0``.

    A pre-release or build suffix (``1.2-rc1``) is ignored for ordering.
    """
    m = _VERSION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a version (expected digits separated by dots, e.g. 1.0)")
    parts = [int(p) for p in m.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_at_least(have: str | None, need: str | None) -> bool:
    """True when ``have`` satisfies a minimum of ``need`` (no minimum: any version)."""
    if need is None:
        return True
    if have is None:
        return False
    try:
        return parse_version(have) >= parse_version(need)
    except ValueError:
        return False
