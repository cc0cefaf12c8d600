"""Batching across clients: requests from every connection meet in one queue; one model thread decodes them together.

The model thread takes the oldest request, then waits at most `max_wait_ms` for more (up to `max_batch`) and decodes
them as one batch (Policy.predict_codes: constrained, speculative when drafts are given). Results go back to each
request's asyncio future, so the event loop — which reads and writes every socket — never waits for the model, and a
slow or dead client only ever holds up its own coroutine.

Why a thread and not an executor per request: one batch at a time is the point (a GPU decodes 8 rows in about the
time of 1), and torch releases the GIL inside its kernels, so the event loop keeps serving sockets meanwhile.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Job:
    image: np.ndarray
    wrist_image: np.ndarray
    instruction: str
    draft: np.ndarray | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Result:
    codes: np.ndarray  # (H, D) int codes
    chunk: np.ndarray  # (H, D) float32 actions
    batch_size: int
    queue_ms: float  # waiting for the model thread
    infer_ms: float  # the batch's decode, shared by its rows
    passes: int  # forward passes of the batch


class ModelWorker:
    """Owns the policy's model: the only thread that calls it."""

    def __init__(self, policy, max_batch: int = 8, max_wait_ms: float = 5.0, clients=None):
        self.policy = policy
        # clients() -> connections open now: once that many requests are in, nobody else can join the batch, so it
        # starts at once (one client alone never pays max_wait_ms).
        self.clients = clients
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.start_codes: np.ndarray | None = None  # the latest chunk written at an episode's first step (drafts)
        self.batches = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tinyvla-model", daemon=True)
        self._thread.start()

    async def submit(self, image, wrist_image, instruction: str, draft) -> Result:
        loop = asyncio.get_running_loop()
        job = Job(image, wrist_image, instruction, draft, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # -- model thread ---------------------------------------------------------------------------------------------
    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        jobs, deadline = [first], time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            if self.clients is not None and len(jobs) >= self.clients() and self._queue.empty():
                break
            left = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            jobs = [j for j in jobs if not j.future.cancelled()]  # the client left while waiting
            if jobs:
                self._decode(jobs)
            if stop:
                return

    def _decode(self, jobs: list[Job]) -> None:
        policy = self.policy
        started = time.perf_counter()
        try:
            passes_before = policy.decode_stats["passes"]
            drafts = [j.draft for j in jobs] if policy.speculative and any(j.draft is not None for j in jobs) else None
            ins = [j.instruction for j in jobs]
            codes = policy.predict_codes([j.image for j in jobs], [j.wrist_image for j in jobs], ins, drafts)
            chunks = [policy.codec.decode(c, i).astype(np.float32) for c, i in zip(codes, ins)]
            passes = policy.decode_stats["passes"] - passes_before
        except Exception as err:  # noqa: BLE001 - every waiting client gets the error, the thread lives on
            for j in jobs:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        infer_ms = 1000 * (time.perf_counter() - started)
        self.batches += 1
        for j, c, chunk in zip(jobs, codes, chunks):
            result = Result(c, chunk, len(jobs), 1000 * (started - j.queued_at), infer_ms, passes)
            j.loop.call_soon_threadsafe(_settle, j.future, result, None)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # cancelled: its client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
