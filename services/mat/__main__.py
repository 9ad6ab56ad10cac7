"""``python -m services.mat --listen HOST:PORT [--weights PATH] [--device D] [--arch F]``."""
from services.stagekit.server import main

from .stage import create_stage

main(create_stage)
