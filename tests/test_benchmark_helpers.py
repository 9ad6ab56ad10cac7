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
