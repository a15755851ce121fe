"""The asyncio client with real processes (issue 14, docs/CLIENT.md): 1,000 concurrent requests on one
client, redirects, a failover under concurrent writes, pipelines and scans like the blocking client's,
and a watch as an async iterator across a failover. Each test runs its own event loop (asyncio.run)."""
import asyncio

import pytest

from zmqstore import aio, errors

from test_failover import FAILOVER_RETRY, status_of


def aio_client(c, node_ids=None, **kwargs):
    """An aio.Client for cluster `c` (keys as its blocking clients use them)."""
    nodes = [c.nodes[i] for i in (node_ids or sorted(c.nodes))]
    endpoints = [n.named_endpoint if c.keys else n.endpoint for n in nodes]
    return aio.Client(endpoints, **(c.keys.client_kwargs() if c.keys else {}), **kwargs)


def test_a_thousand_concurrent_requests_on_one_client(cluster):
    c = cluster()

    async def main():
        async with aio_client(c) as db:
            await asyncio.gather(*(db.put(f"k{i}", {"i": i}) for i in range(1000)))
            values = await asyncio.gather(*(db.get(f"k{i}") for i in range(1000)))
            deleted = await asyncio.gather(*(db.delete(f"k{i}") for i in range(0, 1000, 2)))
            swapped = await asyncio.gather(*(db.cas(f"k{i}", {"i": i}, -i) for i in range(1, 1000, 2)))
            return values, deleted, swapped, [kv async for kv in db.scan(prefix="k")]
    values, deleted, swapped, rows = asyncio.run(main())
    assert values == [{"i": i} for i in range(1000)]
    assert all(deleted) and all(swapped)
    assert dict(rows) == {f"k{i}": -i for i in range(1, 1000, 2)}


def test_redirects_and_errors_as_the_blocking_client(cluster):
    c = cluster()

    async def main():
        async with aio_client(c, node_ids=[3]) as db:           # a secondary: not_primary, followed
            await db.put("r", 1)
            assert db.endpoint == c.nodes[1].endpoint
            assert await db.get("r") == 1 and await db.ping() == 1
            with pytest.raises(errors.UnsupportedOperation):
                await db.get_versions("r")
            with pytest.raises(errors.InvalidKey):
                await db.get("")
            results = await db.pipeline().put("a", 1).get("a").delete("nope").execute(raise_on_error=False)
            assert results == [None, 1, False]
            assert (await db.status())["role"] == "primary"
    asyncio.run(main())


def test_concurrent_writes_across_a_kill_9_of_the_primary_are_all_kept(cluster):
    c = cluster()
    acked = {}

    async def writer(db, n):
        for i in range(n):
            key = f"w{n}-{i}"
            await db.put(key, i)
            acked[key] = i

    async def main():
        async with aio_client(c, retry=FAILOVER_RETRY) as db:
            tasks = [asyncio.create_task(writer(db, n)) for n in range(20, 60)]
            while len(acked) < 300:
                await asyncio.sleep(0.01)
            c.nodes[1].kill()
            await asyncio.gather(*tasks)
            rows = dict([kv async for kv in db.scan(prefix="w")])
            return rows
    rows = asyncio.run(main())
    assert c.wait_primary(10, among=(2, 3)) in (2, 3)
    assert rows == acked and len(acked) == sum(range(20, 60))


def test_an_async_watch_follows_a_failover(cluster):
    c = cluster()

    async def main():
        async with aio_client(c, retry=FAILOVER_RETRY) as db:
            async with db.watch("x") as watcher:
                await asyncio.gather(*(db.put(f"x{i:03d}", i) for i in range(100)))
                c.nodes[1].kill()
                for i in range(100, 150):
                    await db.put(f"x{i:03d}", i)
                events = []
                async for event in watcher:
                    events.append(event)
                    if len(events) == 150:
                        break
                return events, watcher.reconnections
    events, reconnections = asyncio.run(main())
    assert sorted(e.value for e in events) == list(range(150)) and reconnections >= 1
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert [e.value for e in events[100:]] == list(range(100, 150))    # sequential writes, in order
    assert status_of(c.nodes[2]).get("watches", {}).get("open", 0) + \
        status_of(c.nodes[3]).get("watches", {}).get("open", 0) <= 1


def test_an_unanswered_request_times_out_and_its_write_is_kept_for_outcome():
    from zmqstore import Retry
    from zmqstore.testing.process import free_port

    async def main():
        async with aio.Client(f"127.0.0.1:{free_port()}", timeout=0.2, retry=Retry(max_tries=2, deadline=2)) as db:
            with pytest.raises(errors.ConnectionTimeout) as caught:
                await db.put("k", 1)
            return caught.value.request_id, [rid for rid, _ in db._unresolved]
    request_id, unresolved = asyncio.run(main())
    assert request_id == 1 and unresolved == [1]


def test_closing_the_client_ends_requests_in_flight(nodes):
    import signal
    import time
    node = nodes()

    async def main():
        db = aio.Client(node.named_endpoint if node.keys else node.endpoint, timeout=30.0,
                        **(node.keys.client_kwargs() if node.keys else {}))
        await db.ping()
        node.signal(signal.SIGSTOP)             # it will not answer
        try:
            pending = asyncio.ensure_future(db.get("k"))
            for _ in range(500):                # until the request is sent and waits for its reply
                if db._waiting:
                    break
                await asyncio.sleep(0.01)
            assert db._waiting and not pending.done()
            started = time.monotonic()
            db.close()
            with pytest.raises(errors.ConnectionTimeout, match="closed"):
                await pending
            return time.monotonic() - started
        finally:
            node.signal(signal.SIGCONT)
    assert asyncio.run(main()) < 1.0
