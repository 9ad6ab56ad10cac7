"""The files written from deploy/stack.py are as it writes them, and every service folder
has its image: a new model folder fails here until `python -m deploy.generate` (and
`python -m deploy.lock MODEL`) is run for it."""
from __future__ import annotations

from deploy import generate
from deploy.lock import locks
from deploy.stack import ROOT, SERVICES

SERVICE_FOLDERS = ROOT / "services"


def test_generated_files_are_up_to_date():
    stale = [str(p.relative_to(ROOT)) for p in generate.stale()]
    assert not stale, f"run `python -m deploy.generate`; out of date: {stale}"


def test_every_service_folder_is_in_the_table_and_has_a_lock():
    served = {s.model for s in SERVICES}
    folders = {p.parent.name for p in SERVICE_FOLDERS.glob("*/__main__.py")}
    assert folders <= served, f"add {sorted(folders - served)} to deploy/stack.py SERVICES"
    missing = [str(p.relative_to(ROOT)) for p in locks() if not p.is_file()]
    assert not missing, f"run `python -m deploy.lock`; missing: {missing}"


def test_ports_are_unique():
    ports = [s.port for s in SERVICES] + [generate.ORCHESTRATOR.port]
    assert len(ports) == len(set(ports))


def test_the_pipeline_files_load_in_the_orchestrator():
    from orchestrator.pipeline import specs as pipeline
    for path in (generate.GPU_PIPELINE, generate.CPU_PIPELINE):
        specs = pipeline.build(path)
        assert [s.endpoint for s in specs] == [s["endpoint"] for s in generate.stack.video_pipeline(
            gpu=path == generate.GPU_PIPELINE)]
