"""``python -m services.classical --listen HOST:PORT``: every classical stage in one service."""
from services.stagekit.server import main

from .stage import create_stage

main(create_stage)
