"""The router's transport to its workers keeps httpx's meaning: the same errors for the same
failures, and a worker that sees the connection close when its answer is abandoned."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serving.launcher.supervisor import free_port
from serving.upstream.transport import AiohttpTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def serve(handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=AiohttpTransport(8),
                             timeout=httpx.Timeout(5, connect=1))


def test_keep_alive_body_and_headers():
    asyncio.run(_keep_alive())


async def _keep_alive():
    seen = []

    async def handler(reader, writer):
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(request)
            writer.write(b"HTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nok")

    server, url = await serve(handler)
    async with server, client(url) as c:
        for _ in range(3):
            r = await c.post("/v1/x", json={"a": 1}, headers={"X-Request-Id": "r1"})
            assert (r.status_code, r.headers["x-a"], r.content) == (201, "1", b"ok")
    assert len(seen) == 3  # one connection, kept alive
    assert b'{"a":1}' in seen[0] and b"x-request-id: r1" in seen[0].lower()


def test_refused_connection_is_a_connect_error():
    asyncio.run(_refused())


async def _refused():
    async with client(f"http://127.0.0.1:{free_port()}") as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/health")


def test_a_stream_broken_off_is_a_transport_error():
    asyncio.run(_broken())


async def _broken():
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(HEAD + b"6\r\ndata: \r\n")
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server, client(url) as c, c.stream("POST", "/v1/x", json={}) as r:
        with pytest.raises(httpx.TransportError):
            async for _ in r.aiter_raw():
                pass


def test_a_slow_worker_is_a_read_timeout():
    asyncio.run(_slow())


async def _slow():
    async def handler(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    server, url = await serve(handler)
    async with server, client(url) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/x", timeout=httpx.Timeout(0.2, connect=1))


@pytest.mark.parametrize("when", ["before the answer", "mid-stream"])
def test_an_abandoned_answer_closes_the_connection(when: str):
    asyncio.run(_abandoned(when))


async def _abandoned(when: str):
    received, closed = asyncio.Event(), asyncio.Event()

    async def handler(reader, writer):
        await read_request(reader)
        received.set()
        if when == "mid-stream":
            writer.write(HEAD + b"6\r\ndata: \r\n")
        await reader.read()  # EOF: the router hung up
        closed.set()

    server, url = await serve(handler)
    async with server, client(url) as c:
        if when == "mid-stream":
            async with c.stream("POST", "/v1/x", json={}) as r:
                async for _ in r.aiter_raw():
                    break
        else:
            task = asyncio.create_task(c.post("/v1/x", json={}))
            await received.wait()
            task.cancel()  # as the router does when its client leaves first
        await asyncio.wait_for(closed.wait(), 5)
