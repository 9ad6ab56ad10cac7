"""Serve the ProPainter outpaint stage: ``python -m services.propainter --listen HOST:PORT``."""
from services.stagekit.server import main

from .stage import create_stage

main(create_stage)
