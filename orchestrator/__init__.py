"""The orchestrator: it plans a restoration and streams a tape's clips through the stages.

Four parts, each using only those listed before it (``tests/test_layers.py`` checks it):

    media/      reading and writing video, shot detection, the real resolution, the tape
                simulator: what is in a file, and how to write one
    pipeline/   the pipeline file and stage specs, the model registry, the plan, how a step
                reaches its stage (in process, gRPC, Triton), the streaming runner, progress
    jobs/       the job service, its store and clip checkpoints, its client and commands
    commands/   inspect, preview, weights, demo: what the CLI and the web page offer

``web/`` (the web page) and ``cli.py`` (the ``orchestrator`` command) sit on top;
``errors.py`` is shared by all.
"""
__version__ = "0.1.0"
