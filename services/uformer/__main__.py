"""Serve the deblur stage: ``python -m services.uformer --listen HOST:PORT``."""
from services.stagekit.server import main

from .stage import create_stage

if __name__ == "__main__":
    main(create_stage)
