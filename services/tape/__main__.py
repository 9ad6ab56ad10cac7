"""``python -m services.tape --listen HOST:PORT [--weights PATH] [--device D] [--arch F]``:
serves analog/tape (the default) and analog/swinunet."""
from services.stagekit.server import main

from .stage import create_stage

main(create_stage)
