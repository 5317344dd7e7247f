"""Real libp2p hosts on 127.0.0.1: policy acts spread, forgeries spread nowhere."""

import trio

from icn_p2p.metrics import MESSAGES_DROPPED
from icn_p2p.net.gossip import TOPIC_POLICY
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.sources import POLICY_ACT
from icn_p2p.policy.governance import make_local_act
from icn_p2p.wire import seal


async def wait_until(pred, timeout=10.0, step=0.02):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


def dropped(topic: str, reason: str) -> float:
    return MESSAGES_DROPPED.labels(topic=topic, reason=reason)._value.get()


async def test_policy_act_reaches_every_node_of_a_line(tmp_path, policy):
    async with start_nodes(10, tmp_path, topology="line", mesh={"sync_interval_s": 3600}) as c:
        result = await c[0].set_local_policy(policy("coop-a", 5.0))
        assert result.accepted
        await wait_until(lambda: all("coop-a" in n.policy_heads() for n in c.nodes))
        heads = {n.policy_heads()["coop-a"] for n in c.nodes}
        assert len(heads) == 1
        assert c[9].current_policy("coop-a").policy.default_quota.cpu_hours_per_month == 5.0
