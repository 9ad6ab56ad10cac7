"""The pipeline: what a job does and how its frames flow, independent of where jobs live.

    specs.py         a pipeline (file or flags): stages, each a task, model, params, endpoint
    registry.py      the tasks, their models, and which can run here
    plan.py          what a job will do, decided before any work (models, sizes, frame rate)
    sizing.py        the output size: the super-resolution factor within --max-height
    memory.py        the peak memory a plan needs, against what this machine has free
    analysis.py      one pass before any work: the shots, grey scenes and their references,
                     the overlays (and each clip's share of them for its header)
    endpoints.py     replicas of a remote stage, and a failed call in words
    stagerunners.py  how a step reaches its stage: in process, gRPC or Triton, with retries
                     and an outage window
    transforms.py    steps the orchestrator adds itself (resampling to the working size)
    segments.py      finished clips as encoded segments of the output (checkpoints)
    runner.py        the streaming job: decode, clips at shot cuts, stages, segments, join
    progress.py      frames per stage, ETA, the terminal line and the run's figures
"""
