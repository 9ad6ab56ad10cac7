"""Jobs: restorations that outlive a terminal.

    store.py        jobs and clips in SQLite
    checkpoints.py  finished clips on disk, so a run resumes where it stopped
    service.py      the job API (gRPC): submit, watch, cancel, fetch; admission and limits
    latest.py       a running job's latest finished clip and thumbnail, for the web page
    client.py       the job API's client, for the CLI and the web page
    cli.py          the commands that talk to a job service (`submit --server`, `watch`, ...)
"""
