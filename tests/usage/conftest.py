import pytest

from icn_p2p.core.clock import FakeClock
from icn_p2p.identity import NodeKey
from icn_p2p.usage import UsageStore

from .helpers import NOW


@pytest.fixture
def clock():
    return FakeClock(NOW)


@pytest.fixture
def make_store(tmp_path, clock):
    opened = []

    def make(name="a", key=None, **kw):
        kw.setdefault("clock", clock)
        s = UsageStore(tmp_path / name, key or NodeKey.generate(), **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        try:
            s.close()
        except Exception:
            pass
