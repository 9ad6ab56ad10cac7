"""The timing helpers the models' benchmarks share."""
from services.classical.denoise import DenoiseStage
from services.stagekit.benchmark import median_seconds, stage_frames_per_second


def test_median_seconds_times_the_call():
    calls = []
    seconds = median_seconds(lambda: calls.append(1), runs=3)
    assert len(calls) == 4 and seconds >= 0  # one warm-up, three timed


def test_stage_frames_per_second_counts_every_output_frame():
    fps = stage_frames_per_second(DenoiseStage(), width=32, height=24, count=5, warmup=2)
    assert fps > 0


def test_tree_sampler_sees_a_child_process_cpu_and_memory():
    """bench/pipeline.py's CPU use and peak RSS come from this sampler: a child that burns
    CPU for a while holding 200 MB must show both."""
    import subprocess
    import sys
    import time

    from bench.pipeline import TreeSampler

    burn = ("import time, numpy as np; a = np.ones(200 * 2**20, np.uint8); "
            "end = time.process_time() + 0.6\nwhile time.process_time() < end: pass")
    with TreeSampler([]) as sampler:
        start = time.time()
        child = subprocess.Popen([sys.executable, "-c", burn])
        sampler.add(child.pid)
        child.wait()
        stop = time.time()
    assert sampler.peak_rss > 200 * 2**20
    assert 0.4 < sampler.cpu_between(start, stop) < 0.6 + 1.5   # the burn, plus start-up
