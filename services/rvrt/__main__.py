"""Serve the RVRT denoise stage: ``python -m services.rvrt --listen HOST:PORT``."""
from services.stagekit.server import main

from .stage import create_stage

if __name__ == "__main__":
    main(create_stage)
