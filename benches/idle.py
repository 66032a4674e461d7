#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one request on each and reads the whole
answer, then holds them all open and idle until stdin closes. Prints "ready N" once every
connection has had its answer (so the proxy has done its per-connection work), or exits 1 if
any request failed.

Usage: idle.py PORT N [HEADER: VALUE ...]
"""
import asyncio
import os
import sys


async def one(port, request, gate, conns):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        await reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"status {status.decode()}")
        conns.append(writer)


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    extra = "".join(f"{h}\r\n" for h in sys.argv[3:])
    gate = asyncio.Semaphore(int(os.environ.get("IDLE_PARALLEL", "200")))
    conns = []
    tasks = []
    for i in range(n):
        request = (f"GET /bookings/{i} HTTP/1.1\r\nHost: bench\r\nx-user-id: user-{i}\r\n"
                   f"{extra}\r\n").encode()
        tasks.append(one(port, request, gate, conns))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"{len(failed)} of {n} connections failed, first: {failed[0]!r}", file=sys.stderr)
        sys.exit(1)
    print(f"ready {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in conns:
        w.close()


asyncio.run(main())
