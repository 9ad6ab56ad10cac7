"""Temporal windowing: every frame kept once, in order, with bounded look-ahead."""
import pytest

from services.stagekit.windowing import batches, chunks, neighbourhoods


@pytest.mark.parametrize("count", [1, 2, 5, 19, 20, 21, 33, 36, 37, 100])
@pytest.mark.parametrize("size,overlap", [(20, 4), (7, 2), (5, 0), (6, 5)])
def test_chunks_keep_every_frame_once(count, size, overlap):
    kept = []
    for chunk in chunks(range(count), size, overlap):
        assert chunk.frames == list(range(chunk.start, chunk.start + len(chunk.frames)))
        assert len(chunk.frames) == min(size, count)
        kept += chunk.frames[chunk.keep]
    assert kept == list(range(count))


def test_chunks_read_lazily():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    it = chunks(source(), 10, 2)
    next(it)
    assert len(pulled) <= 11


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_neighbourhoods_are_centred_and_padded(count):
    windows = list(neighbourhoods(range(count), 2, 1))
    assert len(windows) == count
    for i, window in enumerate(windows):
        assert window[2] == i
        assert window == [min(max(j, 0), count - 1) for j in range(i - 2, i + 2)]


def test_batches():
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
