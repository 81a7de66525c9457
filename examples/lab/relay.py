#!/usr/bin/env python3
"""A TCP (or UDP) relay that makes a backend slow or lossy, in user space (no netem), for
netpulse's labs.

    relay.py LISTEN_IP:PORT UPSTREAM_IP:PORT [--udp] [--delay MS] [--control FILE]
             [--drop-probes P] [--seed N]

Requests pass to the upstream at once; everything the upstream sends back is held --delay ms
(0) before it is passed on, in order, so an HTTP answer (or a UDP reply) comes that much late.
With --udp, each client address gets a socket of its own towards the upstream, closed after
60 s without traffic.

--control FILE: while FILE exists, the number of ms in it replaces --delay (read again at most
every 100 ms): `echo 0 > FILE` removes the delay at run time, `rm FILE` restores --delay.

--drop-probes P (TCP): a share P of the connections whose first bytes carry the User-Agent of
netpulse's probes (netpulse-monitor) are accepted and never answered, so those probes are lost;
every other connection (the users' requests) is relayed as usual. --seed makes it reproducible.

Prints one line when it listens. Stops on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import random
import signal
import sys
import time

PROBE_MARK = b"netpulse-monitor"
CHUNK = 65536


def addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not IP:PORT")
    return host, int(port)


class Delay:
    """The delay now, in seconds: --delay, or the control file's while it exists."""

    def __init__(self, ms, control):
        self.base = ms / 1000.0
        self.control = control
        self.value = self.base
        self.read_at = 0.0

    def __call__(self):
        now = time.monotonic()
        if self.control and now - self.read_at >= 0.1:
            self.read_at = now
            try:
                with open(self.control) as f:
                    self.value = max(0.0, float(f.read().strip() or 0)) / 1000.0
            except FileNotFoundError:
                self.value = self.base
            except (OSError, ValueError):
                pass  # half-written or unreadable: keep the last value
        return self.value


async def forward(reader, writer):
    """Client to upstream, at once; passes the client's end of sending on."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def late(reader, writer, delay):
    """Upstream to client, each chunk `delay()` after it arrived, in order; then closes."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            queue.put_nowait((loop.time() + delay(), data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0.0, None))
    try:
        await sender
    except (ConnectionError, OSError):
        pass
    writer.close()


async def relay(client_reader, client_writer, args, delay, rng):
    # Connect upstream while the client's first bytes come, so the relay adds no round trip.
    upstream = asyncio.ensure_future(asyncio.open_connection(*args.upstream))
    try:
        first = await client_reader.read(CHUNK)
        if not first:
            return
        if args.drop_probes > 0 and PROBE_MARK in first and rng.random() < args.drop_probes:
            # A lost probe: nothing comes back; wait for the prober to give up.
            while await client_reader.read(CHUNK):
                pass
            return
        up_reader, up_writer = await upstream
        up_writer.write(first)
        await asyncio.gather(forward(client_reader, up_writer), late(up_reader, client_writer, delay))
    except (ConnectionError, OSError):
        pass
    finally:
        client_writer.close()
        if not upstream.done():
            upstream.cancel()
        elif not upstream.cancelled() and upstream.exception() is None:
            upstream.result()[1].close()


class UdpFlow(asyncio.DatagramProtocol):
    """One client's socket towards the upstream: replies go back to the client, late."""

    def __init__(self, relay, client):
        self.relay, self.client, self.transport, self.used = relay, client, None, time.monotonic()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, _addr):
        self.used = time.monotonic()
        self.relay.later(data, self.client)

    def error_received(self, exc):
        pass  # the upstream's port unreachable: the client hears nothing, as without a relay


class UdpRelay(asyncio.DatagramProtocol):
    """The listening socket: each client's datagrams to its flow, replies back after the delay."""

    IDLE = 60.0

    def __init__(self, upstream, delay):
        self.upstream, self.delay, self.flows, self.transport = upstream, delay, {}, None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport):
        self.transport = transport

    def later(self, data, client):
        self.loop.call_later(self.delay(), self.transport.sendto, data, client)

    def datagram_received(self, data, client):
        flow = self.flows.get(client)
        if flow is None:
            self.loop.create_task(self.open(data, client))
        elif flow.transport is not None:
            flow.used = time.monotonic()
            flow.transport.sendto(data)

    async def open(self, data, client):
        if client not in self.flows:
            self.flows[client] = UdpFlow(self, client)
            try:
                await self.loop.create_datagram_endpoint(lambda: self.flows[client], remote_addr=self.upstream)
            except OSError:
                del self.flows[client]
                return
        self.flows[client].transport.sendto(data)

    async def sweep(self):
        while True:
            await asyncio.sleep(self.IDLE / 4)
            now = time.monotonic()
            for client, flow in list(self.flows.items()):
                if now - flow.used > self.IDLE and flow.transport is not None:
                    flow.transport.close()
                    del self.flows[client]


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("listen", type=addr)
    p.add_argument("upstream", type=addr)
    p.add_argument("--udp", action="store_true", help="relay UDP datagrams instead of TCP")
    p.add_argument("--delay", type=float, default=0.0, help="ms added to every answer")
    p.add_argument("--control", help="a file whose number of ms replaces --delay while it exists")
    p.add_argument("--drop-probes", type=float, default=0.0, help="share of probes left unanswered")
    p.add_argument("--seed", type=int)
    args = p.parse_args()
    if not 0.0 <= args.drop_probes <= 1.0:
        p.error(f"--drop-probes {args.drop_probes} is not a probability from 0 to 1")
    delay, rng = Delay(args.delay, args.control), random.Random(args.seed)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    what = f"{args.listen[0]}:{args.listen[1]} -> {args.upstream[0]}:{args.upstream[1]}"
    if args.udp:
        udp = UdpRelay(args.upstream, delay)
        transport, _ = await loop.create_datagram_endpoint(lambda: udp, local_addr=args.listen)
        sweep = loop.create_task(udp.sweep())
        print(f"relay udp {what}, answers {args.delay:g} ms late", flush=True)
        await stop.wait()
        sweep.cancel()
        transport.close()
        return
    server = await asyncio.start_server(lambda r, w: relay(r, w, args, delay, rng), *args.listen)
    print(f"relay {what}, answers {args.delay:g} ms late, {args.drop_probes:.0%} of probes dropped", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except OSError as e:
        sys.exit(f"relay: {e}")
