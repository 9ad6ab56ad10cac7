"""Serve the superres stage: ``python -m services.psrt --listen HOST:PORT``."""
from services.stagekit.server import main

from .stage import create_stage

if __name__ == "__main__":
    main(create_stage)
