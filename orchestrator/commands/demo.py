"""`python -m orchestrator.commands.demo OUT.mp4`: make the demo tape (no footage ships with us)."""
import sys
from pathlib import Path

from ..media.simulate import make_demo_tape

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m orchestrator.commands.demo OUT.mp4")
    print(make_demo_tape(Path(sys.argv[1])))
