"""Our py-libp2p overrides: pinned to the library they were written for, and doing what they claim."""

from importlib.metadata import version

import pytest
import trio
import trio.testing

import libp2p.pubsub.gossipsub as gossipsub_module
import libp2p.pubsub.pubsub as pubsub_module
import libp2p.stream_muxer.yamux.yamux as yamux_module
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from libp2p.utils.varint import encode_varint_prefixed

from icn_p2p.net import libp2p_tuning as tuning
from icn_p2p.net.gossip import TOPIC_POLICY
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.sources import POLICY_ACT


def test_library_is_the_version_the_overrides_were_written_for():
    assert version("libp2p") == tuning.LIBP2P_VERSION


@pytest.mark.parametrize("name", sorted(tuning.PINNED_SOURCES))
def test_patched_library_code_is_unchanged(name):
    """Fails when py-libp2p changes code an override replaces or relies on: review the override."""
    tuning.apply()
    assert tuning.source_hash(tuning.resolve(name)) == tuning.PINNED_SOURCES[name], name


def test_apply_installs_every_override_once():
    tuning.apply()
    tuning.apply()
    assert yamux_module.YamuxStream._auto_tune_and_send_window_update is tuning._batched_window_update
    for module in (pubsub_module, gossipsub_module):
        assert module.env_to_send_in_RPC is tuning._cached_env_to_send_in_RPC
        assert module.maybe_consume_signed_record is tuning._cached_maybe_consume_signed_record
    assert pubsub_module.read_varint_prefixed_bytes_limited is tuning._buffered_read_varint_prefixed_bytes_limited
    assert pubsub_module.RpcQueue is tuning._LargeRpcQueue
    assert pubsub_module.SUBSCRIPTION_CHANNEL_SIZE >= tuning.SUBSCRIPTION_QUEUE
    # the originals stay reachable for the wrappers
    assert tuning._ORIGINALS["libp2p.pubsub.utils.maybe_consume_signed_record"] is not \
        tuning._cached_maybe_consume_signed_record


class _Reader:
    """A pubsub-stream-shaped reader over a real trio stream."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.reads = 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        return await self.stream.receive_some(n)


async def test_buffered_reader_cuts_rpcs_out_of_any_chunking():
    send, recv = trio.testing.memory_stream_one_way_pair()
    reader = _Reader(recv)
    bodies = [b"", b"a", b"x" * 300, bytes(range(256)) * 3]
    wire = b"".join(encode_varint_prefixed(b) for b in bodies)
    await send.send_all(wire)  # all at once: one read serves every RPC
    got = [await tuning._buffered_read_varint_prefixed_bytes_limited(reader, 10_000) for _ in bodies]
    assert got == bodies
    assert reader.reads == 1

    async def dribble() -> None:  # one byte at a time
        for i in range(len(wire)):
            await send.send_all(wire[i:i + 1])
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        got = [await tuning._buffered_read_varint_prefixed_bytes_limited(reader, 10_000) for _ in bodies]
    assert got == bodies


async def test_buffered_reader_errors_match_the_library():
    read = tuning._buffered_read_varint_prefixed_bytes_limited
    send, recv = trio.testing.memory_stream_one_way_pair()
    with pytest.raises(ValueError):
        await read(_Reader(recv), 0)
    await send.send_all(encode_varint_prefixed(b"y" * 100))
    with pytest.raises(MessageTooLarge):
        await read(_Reader(recv), 99)

    send, recv = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"\xff" * 10)
    with pytest.raises(ParseError):
        await read(_Reader(recv), 1000)

    send, recv = trio.testing.memory_stream_one_way_pair()
    await send.send_all(encode_varint_prefixed(b"z" * 50)[:20])
    await send.aclose()
    with pytest.raises(IncompleteReadError):
        await read(_Reader(recv), 1000)

    send, recv = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"\x85")  # half a length prefix, then the end
    await send.aclose()
    with pytest.raises(IncompleteReadError):
        await read(_Reader(recv), 1000)


async def test_a_message_costs_no_window_update_and_no_record_check(tmp_path, policy, monkeypatch):
    """On a real mesh: per message, no WINDOW_UPDATE frame, no peer-record verification, no record bytes."""
    monkeypatch.delenv("PY_YAMUX_RELEASE_ON_READ", raising=False)
    record_checks = 0
    original_check = tuning._ORIGINALS["libp2p.pubsub.utils.maybe_consume_signed_record"]

    def counting_check(msg, host, peer_id):
        nonlocal record_checks
        record_checks += 1
        return original_check(msg, host, peer_id)

    window_updates = 0
    original_update = YamuxStream.send_window_update

    async def counting_update(self, increment, skip_lock=False):
        nonlocal window_updates
        window_updates += 1
        return await original_update(self, increment, skip_lock)

    published_with_record = 0
    published = 0
    original_send = gossipsub_module.GossipSub.send_rpc

    def watching_send(self, peer_id, rpc, priority=False):
        nonlocal published, published_with_record
        if rpc.publish:
            published += 1
            published_with_record += rpc.HasField("senderRecord")
        return original_send(self, peer_id, rpc, priority)

    async with start_nodes(3, tmp_path, topology="line", mesh={"sync_interval_s": 3600}) as c:
        await trio.sleep(0.5)  # let the hello and graft exchanges settle
        got: list[int] = []

        async def on_act(delivery) -> None:
            got.append(1)

        c[2].handle(POLICY_ACT, on_act)
        monkeypatch.setitem(tuning._ORIGINALS, "libp2p.pubsub.utils.maybe_consume_signed_record", counting_check)
        monkeypatch.setattr(YamuxStream, "send_window_update", counting_update)
        monkeypatch.setattr(gossipsub_module.GossipSub, "send_rpc", watching_send)
        messages = 20
        for k in range(messages):
            await c[0].set_local_policy(policy(f"tuning-{k}"), reason=str(k))
            await trio.sleep(0.01)
        with trio.fail_after(10):
            while len(got) < messages:
                await trio.sleep(0.02)
        assert c[1].gossip.mesh_peers(TOPIC_POLICY)
    assert published >= 2 * messages  # node 0 -> 1 and node 1 -> 2, at least
    assert published_with_record == 0
    assert window_updates <= 2  # (the library default sends two or three per message per hop)
    assert record_checks <= 4  # a new record only (library: one or two per RPC)
