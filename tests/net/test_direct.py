"""Direct notes between real hosts on 127.0.0.1."""

import trio

from icn_p2p.node.harness import start_nodes


async def test_notes_queued_during_a_write_share_the_next_one_and_all_arrive(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=["c"]) as cluster:
        a, b = cluster[0], cluster[1]
        got: list[int] = []
        all_in = trio.Event()

        async def on_note(env, conv):
            assert conv.peer_did == a.did
            got.append(env.payload["i"])
            if len(got) == 200:
                all_in.set()

        b.direct.handle("test.note", on_note)
        peer = a.host.peer_for_did(b.did)
        await a.direct.notify(peer, "test.note", {"i": -1})  # opens the stream
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        got.clear()
        writes = a.direct.writes
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(lambda i=i: a.direct.notify(peer, "test.note", {"i": i}))
        with trio.fail_after(10):
            await all_in.wait()
        assert sorted(got) == list(range(200))
        assert a.direct.writes - writes < 50  # 200 notes, a handful of writes


async def test_a_note_given_up_while_queued_is_not_sent(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=["c"]) as cluster:
        a, b = cluster[0], cluster[1]
        got: list[int] = []

        async def on_note(env, conv):
            got.append(env.payload["i"])

        b.direct.handle("test.note", on_note)
        peer = a.host.peer_for_did(b.did)
        await a.direct.notify(peer, "test.note", {"i": 0})
        lock = a.direct._locks[peer]
        release = trio.Event()

        async def writing():  # holds the peer's lock as a write in progress does
            async with lock:
                await release.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writing)
            await trio.sleep(0.01)
            with trio.move_on_after(0.05):
                await a.direct.notify(peer, "test.note", {"i": 1})
            release.set()
        await a.direct.notify(peer, "test.note", {"i": 2})
        with trio.fail_after(5):
            while len(got) < 2:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert got == [0, 2]
