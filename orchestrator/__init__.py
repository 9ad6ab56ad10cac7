"""The orchestrator: media I/O, shot detection, the pipeline runner and the CLI."""
__version__ = "0.1.0"
