"""stagekit.parallel: frames computed side by side come out in order, read lazily."""
from __future__ import annotations

import threading
import time

from services.stagekit.parallel import PerThread, ordered_map, thread_cpu


def test_results_keep_the_items_order_whatever_finishes_first():
    def slow_for_even(i):
        time.sleep(0.02 if i % 2 == 0 else 0.0)
        return i * i

    assert list(ordered_map(slow_for_even, range(12), workers=3)) == [i * i for i in range(12)]


def test_work_runs_on_several_threads_at_once():
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.03)
        with lock:
            inside[0] -= 1
        return i

    assert list(ordered_map(work, range(8), workers=2)) == list(range(8))
    assert most[0] == 2


def test_items_are_read_lazily_and_a_closed_map_stops():
    read = []

    def items():
        for i in range(1000):
            read.append(i)
            yield i

    out = ordered_map(lambda i: i, items(), workers=2, ahead=2)
    assert next(out) == 0
    assert len(read) == 3          # the one handed on and two ahead
    out.close()
    assert len(read) == 3


def test_an_error_reaches_the_reader_in_its_place():
    def work(i):
        if i == 3:
            raise ValueError("bad frame 3")
        return i

    out = ordered_map(work, range(6), workers=2)
    assert [next(out) for _ in range(3)] == [0, 1, 2]
    try:
        next(out)
    except ValueError as exc:
        assert "bad frame 3" in str(exc)
    else:
        raise AssertionError("the error was lost")


def test_per_thread_gives_each_thread_its_own_object():
    made = PerThread(object)
    seen = {}

    def work(i):
        seen.setdefault(threading.get_ident(), set()).add(id(made.get()))
        time.sleep(0.01)
        return i

    list(ordered_map(work, range(8), workers=2))
    assert all(len(ids) == 1 for ids in seen.values())
    assert len({next(iter(ids)) for ids in seen.values()}) == len(seen)


def test_workers_cpu_is_charged_to_the_calling_thread():
    """A stage's CPU (bench-pipeline's breakdown) is its thread's and its frame workers':
    work done on the pool counts for the thread that mapped it, and not for another."""
    def burn(_):
        end = time.thread_time() + 0.1
        while time.thread_time() < end:
            pass

    before = thread_cpu()
    other = []
    watcher = threading.Thread(target=lambda: other.append(thread_cpu()))
    list(ordered_map(burn, range(4), workers=2))
    watcher.start()
    watcher.join()
    assert thread_cpu() - before >= 0.35
    assert other[0] < 0.1


def test_a_new_thread_starts_with_nothing_charged():
    """A thread's account ends with it: a later thread given the same ident (as the
    system reuses them) does not inherit what the pool did for the first."""
    def burn(_):
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    worker = threading.Thread(target=lambda: list(ordered_map(burn, range(4), workers=2)))
    worker.start()
    worker.join()
    seen = []
    for _ in range(20):
        later = threading.Thread(target=lambda: seen.append((threading.get_ident(), thread_cpu())))
        later.start()
        later.join()
    assert worker.ident in {ident for ident, _ in seen}      # an ident was given again
    assert max(cpu for _, cpu in seen) < 0.1
