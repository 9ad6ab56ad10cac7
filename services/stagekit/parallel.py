"""Frame-parallel work inside a stage, results in order.

A stage's thread works on one frame at a time, so the slowest stage of a pipeline keeps one
core busy while the cores the others leave idle wait for it. Frames whose work does not
depend on each other's results (each denoised from its own window, each upscaled alone)
can be computed on a few threads at once: OpenCV and numpy let go of the GIL while they
work, so the threads really run side by side.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


PARALLEL_PIXELS = 8_400_000   # pixels of frames one stage works on side by side (a UHD frame)


def frame_workers(pixels: int = 0) -> int:
    """Threads for one stage's frames of ``pixels`` each: this machine's cores, up to four
    (beyond that the stages running beside it have the other cores), and fewer for large
    frames, so a stage's working copies stay within PARALLEL_PIXELS whatever the size."""
    by_memory = PARALLEL_PIXELS // pixels if pixels > 0 else 4
    return max(1, min(4, os.cpu_count() or 1, by_memory))


FEW_CORES = 4   # up to this many, OpenCV's own thread pool is off (see opencv_threads)


def opencv_threads() -> None:
    """Turn OpenCV's own thread pool off on a machine of few cores. There the stages, each on
    its thread, and their frame workers already keep every core busy; a call from one of them
    finds the pool taken or only hands work between threads (tape_sim on 2 cores: the same
    output, bit for bit, for about 2 % less CPU). A larger machine keeps the pool for the
    cores the stages leave idle."""
    import cv2
    if (os.cpu_count() or 1) <= FEW_CORES:
        cv2.setNumThreads(1)


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int,
                ahead: int | None = None) -> Iterator[R]:
    """``function(item)`` for every item, in the items' order, computed on ``workers``
    threads with at most ``ahead`` (default ``workers``) results waiting besides the one
    handed on. Items are read on the calling thread, lazily. Closing the iterator early
    cancels what has not started and waits for what has."""
    ahead = workers if ahead is None else ahead
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frames")
    pending: deque = deque()
    charge = functools.partial(_charged, function, _account())
    try:
        for item in items:
            pending.append(pool.submit(charge, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_CHARGE_LOCK = threading.Lock()
_ACCOUNTS = threading.local()


def _account() -> list[float]:
    """The calling thread's account of CPU seconds pool threads spent for it. Kept in the
    thread's own storage, so it goes with the thread: a later thread that is given the
    same ident starts from nothing."""
    account = getattr(_ACCOUNTS, "seconds", None)
    if account is None:
        account = _ACCOUNTS.seconds = [0.0]
    return account


def _charged(function: Callable[[T], R], owner: list[float], item: T) -> R:
    start = time.thread_time()
    try:
        return function(item)
    finally:
        spent = time.thread_time() - start
        with _CHARGE_LOCK:
            owner[0] += spent


def thread_cpu() -> float:
    """CPU seconds of the calling thread, with what ``ordered_map``'s workers spent on
    its behalf: a stage's whole CPU cost when called on the stage's thread."""
    with _CHARGE_LOCK:
        return time.thread_time() + _account()[0]


class PerThread(Generic[T]):
    """One object per thread, made on first use: for state a thread may not share (an
    OpenCV optical flow object keeps its buffers between calls)."""

    def __init__(self, factory: Callable[[], T]):
        self.factory = factory
        self.local = threading.local()

    def get(self) -> T:
        value = getattr(self.local, "value", None)
        if value is None:
            value = self.local.value = self.factory()
        return value
