"""The policy server behind `tinyvla serve`: openpi's websocket protocol, every client's requests decoded in batches.

    server = PolicyServer(Policy.from_pretrained("runs/tiny-cpu/final"), port=8000)
    server.serve_forever()            # until SIGINT / SIGTERM

On connect the server sends a metadata map (protocol.metadata); then each binary message is one request
(protocol.py says what it may hold) and gets one reply: a msgpack map with `actions` and `server_timing`, or, for a bad
request, a text frame starting with "error:" (openpi's client raises it as RuntimeError). The connection stays open
after an error: one bad message costs its sender one reply, nothing else. `GET /healthz` over plain HTTP on the same
port answers 200 "OK". With an API key, a websocket client must send `Authorization: Api-Key KEY` (what openpi's
client sends for `api_key=`); the health check needs none.

What keeps one client from hurting the others: each connection is its own coroutine and its own Session (ensembler,
draft); the model runs in one thread fed by a queue (batching.py), so the event loop only moves bytes; messages over
`max_message_mb` close that connection (websocket close code 1009) before they are buffered whole; a connection that
sends nothing for `idle_timeout_s` is closed; a TCP client that never finishes the websocket handshake is dropped
after websockets' open timeout (10 s).
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import signal
import time

import numpy as np

from tinyvla.serving.batching import ModelWorker
from tinyvla.serving.protocol import RequestError, Session, metadata, observation_keys_for, parse_request
from tinyvla.serving.wire import WireError, pack, unpack

log = logging.getLogger("tinyvla.serve")


class PolicyServer:
    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                 max_wait_ms: float = 5.0, api_key: str | None = None, identity: dict | None = None,
                 idle_timeout_s: float = 600.0, max_message_mb: float = 16.0, observation_keys: dict | None = None):
        self.policy = policy
        self.host, self.port = host, port
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.api_key = api_key or None
        self.idle_timeout_s = idle_timeout_s
        self.max_message_bytes = int(max_message_mb * 2**20)
        # the default spellings, the policy's own (policy.json "observation_keys"), then the caller's
        self.keys = observation_keys_for(policy.config.meta.get("observation_keys"))
        if observation_keys:
            self.keys = {n: tuple(dict.fromkeys([*observation_keys.get(n, []), *v])) for n, v in self.keys.items()}
        self.metadata = metadata(policy, identity, max_batch, self.keys)
        self.worker: ModelWorker | None = None
        self.connections = 0  # open now
        self.served = {"connections": 0, "requests": 0, "errors": 0}

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def serve_forever(self, on_ready=None) -> None:
        """Serve until SIGINT or SIGTERM, then close every connection and stop the model thread."""
        asyncio.run(self.run(on_ready, handle_signals=True))

    async def run(self, on_ready=None, stop: asyncio.Event | None = None, handle_signals: bool = False) -> None:
        from websockets.asyncio.server import serve

        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        # websockets logs every failed handshake (port scanners, health probes over raw TCP) as an error: noise here.
        logging.getLogger("websockets").setLevel(logging.CRITICAL)
        self.worker = ModelWorker(self.policy, self.max_batch, self.max_wait_ms, clients=lambda: self.connections)
        try:
            async with serve(self._handle, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                             process_request=self._process_request) as server:
                self.port = server.sockets[0].getsockname()[1]  # the real one when port 0 was asked for
                if on_ready is not None:
                    on_ready(self)
                await stop.wait()
                log.info("shutting down: closing %d connection(s)", self.connections)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.close)
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    # -- HTTP side: health check and API key -----------------------------------------------------------------------
    def _process_request(self, connection, request):
        if request.path.split("?")[0] == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key (send the header 'Authorization: Api-Key KEY')\n")
        return None

    # -- one connection ---------------------------------------------------------------------------------------------
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        self.served["connections"] += 1
        session = Session(self.policy)
        prev_total_ms = None
        try:
            await ws.send(pack(self.metadata))
            while True:
                try:
                    data = await asyncio.wait_for(ws.recv(), timeout=self.idle_timeout_s)
                except TimeoutError:
                    await ws.close(1001, f"idle for {self.idle_timeout_s:g} s")
                    return
                started = time.perf_counter()
                try:
                    reply = await self._answer(session, data)
                except (WireError, RequestError) as err:
                    self.served["errors"] += 1
                    await ws.send(f"error: {err}")
                    continue
                except Exception as err:  # noqa: BLE001 - a failure on one request must not end the server
                    self.served["errors"] += 1
                    log.exception("request failed")
                    await ws.send(f"error: the server failed on this request: {type(err).__name__}: {err}"[:2000])
                    continue
                self.served["requests"] += 1
                timing = reply.setdefault("server_timing", {})
                timing["total_ms"] = 1000 * (time.perf_counter() - started)
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                await ws.send(pack(reply))
                prev_total_ms = 1000 * (time.perf_counter() - started)
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1

    async def _answer(self, session: Session, data) -> dict:
        msg = unpack(data)
        req = parse_request(msg, self.keys)
        if req.reset:
            session.reset()
        if not req.acts:
            ctrl = msg.get("__ctrl__") if isinstance(msg, dict) else None
            return {"__ack__": ctrl} if ctrl is not None else {"reset": True, "step": 0}
        timing: dict = {"infer_ms": 0.0, "queue_ms": 0.0, "batch_size": 0, "forward_passes": 0}
        if req.mode == "action":
            step = session.step
            queried = session.ensembler.needs_query(step)
            if queried:
                result = await self._query(session, req, step, timing)
                session.ensembler.add(result.chunk, step)
            actions = session.ensembler.action(step)[None]
            session.step += 1
        else:
            if session.last_codes is not None:
                session.step = session.last_codes[0] + req.shift
            step, queried = session.step, True
            actions = (await self._query(session, req, step, timing)).chunk
        return {"actions": np.asarray(actions, dtype=np.float32), "step": step, "queried": queried,
                "server_timing": timing}

    async def _query(self, session: Session, req, step: int, timing: dict):
        draft = session.draft(self.worker.start_codes) if self.policy.speculative else None
        result = await self.worker.submit(req.image, req.wrist_image, req.instruction, draft)
        session.last_codes = (step, result.codes)  # after the model call: a failed call changes nothing
        if step == 0:
            self.worker.start_codes = result.codes
        timing.update(infer_ms=result.infer_ms, queue_ms=result.queue_ms, batch_size=result.batch_size,
                      forward_passes=result.passes)
        return result
