import logging

import pytest

logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def policy_body(coop: str, cpu: float = 10.0) -> dict:
    return {"coop_id": coop, "default_quota": {"cpu_hours_per_month": cpu, "max_concurrent_tasks": 2,
                                               "max_priority": "High"}}


@pytest.fixture
def policy():
    return policy_body
