"""What a person asks of the tool besides a restoration, for the CLI and the web page.

    inspect.py   what the tool finds in a video and the pipeline it would run
    preview.py   a short stretch restored, beside the original
    weights.py   the weights store: list, pull
    demo.py      the demo tape (`make demo`)
"""
