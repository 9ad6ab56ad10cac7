"""Serve the colorize stage: ``python -m services.ddcolor --listen HOST:PORT``."""
from services.stagekit.server import main

from .stage import create_stage

if __name__ == "__main__":
    main(create_stage)
