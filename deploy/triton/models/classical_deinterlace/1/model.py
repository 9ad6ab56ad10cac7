# Written by `python -m deploy.generate` from deploy/stack.py: edit that, not this file.
"""Triton's Python backend loads this file; the stage adapter is deploy/triton/backend.py."""
import os
import sys

# The backend's embedded interpreter ignores $PYTHONPATH, which the image and the tests set.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if p and p not in sys.path]

from deploy.triton.backend import TritonPythonModel  # noqa: E402,F401
