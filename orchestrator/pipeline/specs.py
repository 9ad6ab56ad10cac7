"""A pipeline: the stages to run, in order, each with its model, params and endpoint.

It comes from the defaults, a pipeline file (YAML) and the command line, in that order of
precedence:

    stages:
      - task: deinterlace
      - task: analog
      - task: denoise
        model: classical
        params: {strength: "8"}
        endpoint: grpc://10.0.0.5:50051
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import registry
from ..errors import UserError


@dataclass
class StageSpec:
    task: str
    model: str = "auto"
    params: dict[str, str] = field(default_factory=dict)
    endpoint: str = "local"   # local | grpc://HOST:PORT

    def describe(self) -> str:
        where = "" if self.endpoint == "local" else f" @ {self.endpoint}"
        params = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.task}={self.model}{f'({params})' if params else ''}{where}"


def default_stages() -> list[StageSpec]:
    return [StageSpec(task) for task in registry.TASKS]


def load_file(path: Path) -> list[StageSpec]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"pipeline file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"pipeline file {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise UserError(f"pipeline file {path}: expected a 'stages:' list")
    specs = []
    for i, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict) or "task" not in entry:
            raise UserError(f"pipeline file {path}: stage {i + 1} needs a 'task'")
        unknown = set(entry) - {"task", "model", "params", "endpoint"}
        if unknown:
            raise UserError(f"pipeline file {path}: stage {i + 1}: unknown key(s) {sorted(unknown)}")
        specs.append(StageSpec(
            task=str(entry["task"]), model=str(entry.get("model", "auto")),
            params={str(k): str(v) for k, v in (entry.get("params") or {}).items()},
            endpoint=str(entry.get("endpoint", "local"))))
    return specs


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise UserError(f"{flag} {value!r}: expected KEY=VALUE")
        pairs.append((key, rest))
    return pairs


def build(file: Path | None = None, stages: str | None = None, skip: list[str] | None = None,
          models: list[str] | None = None, sets: list[str] | None = None,
          endpoints: list[str] | None = None) -> list[StageSpec]:
    """The pipeline the user asked for, checked: every task known, every model valid."""
    specs = load_file(file) if file else default_stages()
    if stages:
        by_task = {s.task: s for s in specs}
        chosen = [t.strip() for t in stages.split(",") if t.strip()]
        for task in chosen:
            known_task(task, "--stages")
        specs = [by_task.get(t, StageSpec(t)) for t in chosen]
    if not any(s.task == DEINTERLACE for s in specs):
        # Inserted for every pipeline: the plan keeps it for interlaced input alone.
        specs.insert(0, StageSpec(DEINTERLACE))
    if skip:
        skipped = {t.strip() for item in skip for t in item.split(",") if t.strip()}
        for task in sorted(skipped):
            known_task(task, "--skip")
        specs = [s for s in specs if s.task not in skipped]
    by_task = {s.task: s for s in specs}
    for task, model in _pairs(models, "--model"):
        _spec(by_task, task, "--model").model = model
    for key, value in _pairs(sets, "--set"):
        task, dot, param = key.partition(".")
        if not dot or not param:
            raise UserError(f"--set {key}={value}: expected TASK.PARAM=VALUE")
        _spec(by_task, task, "--set").params[param] = value
    for task, endpoint in _pairs(endpoints, "--endpoint"):
        targets = specs if task == "all" else [_spec(by_task, task, "--endpoint")]
        for spec in targets:
            spec.endpoint = endpoint
    for spec in specs:
        _check(spec)
    if not specs:
        raise UserError("the pipeline has no stages")
    problem = order_problem([s.task for s in specs])
    if problem:
        raise UserError(problem)
    return specs


DEINTERLACE = "deinterlace"
FIELD_ORDERS = ("auto", "tff", "bff", "progressive")   # deinterlace.field_order, --field-order


@dataclass(frozen=True)
class OrderRules:
    """What no order of the stages may break; every other order is the user's choice
    (bench/order.py measures what each costs and gives)."""

    # The tasks that lead, in this order. deinterlace makes the progressive frames every
    # other stage takes (plan.py resamples to the working size right after it); analog
    # mends the tape's line and field damage (jitter, dropouts, chroma delay) before any
    # other stage spreads it across lines and frames.
    first: tuple[str, ...] = (DEINTERLACE, "analog")
    why: tuple[str, ...] = (
        "it turns interlaced frames into the progressive ones the others take",
        "it mends the tape's line damage before the others spread it")


ORDER_RULES = OrderRules()


def order_problem(tasks: list[str] | tuple[str, ...]) -> str | None:
    """Why this order of tasks cannot run, or None."""
    tasks = list(tasks)
    leaders = ORDER_RULES.first
    for rank, (task, why) in enumerate(zip(leaders, ORDER_RULES.why)):
        if task not in tasks:
            continue
        wrong = [t for t in tasks[:tasks.index(task)] if t not in leaders[:rank]]
        if wrong:
            after = f" (only {', '.join(leaders[:rank])} before it)" if rank else ""
            return (f"stage order: {task} must come first{after}: {why}; not after "
                    f"{', '.join(wrong)}")
    return None


ALL_TASKS = registry.TASKS + registry.IMAGE_TASKS


def known_task(task: str, flag: str) -> str:
    """``task`` if it is one; else a UserError naming the flag, with a suggestion."""
    if task not in ALL_TASKS:
        raise UserError(f"{flag}: unknown task '{task}'{did_you_mean(task, ALL_TASKS)} "
                        f"(tasks: {', '.join(ALL_TASKS)})")
    return task


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _spec(by_task: dict, task: str, flag: str) -> StageSpec:
    known_task(task, flag)
    if task not in by_task:
        raise UserError(f"{flag}: no '{task}' stage in this pipeline "
                        f"(stages: {', '.join(by_task) or 'none'})")
    return by_task[task]


def _check(spec: StageSpec) -> None:
    if spec.task not in ALL_TASKS:
        raise UserError(f"unknown task '{spec.task}'{did_you_mean(spec.task, ALL_TASKS)} "
                        f"(tasks: {', '.join(ALL_TASKS)})")
    if spec.model != "auto" and spec.model not in registry.models(spec.task):
        choices = registry.models(spec.task)
        raise UserError(f"no model '{spec.model}' for task '{spec.task}'"
                        f"{did_you_mean(spec.model, choices)} (choose {', '.join(choices)} or auto)")
    if spec.endpoint != "local" and not spec.endpoint.startswith(("grpc://", "triton://")):
        raise UserError(f"stage {spec.task}: endpoint must be 'local', grpc://HOST:PORT or "
                        f"triton://HOST:PORT/MODEL, not {spec.endpoint!r}")


def check_runnable(specs: list[StageSpec]) -> None:
    """What can be known here before any work about the stages that run in this process: a
    model chosen by name has its weights, and every parameter set is one its stage takes."""
    for spec in specs:
        if spec.endpoint != "local":
            continue
        model = registry.resolve(spec.task, spec.model)
        if spec.model != "auto":
            if not registry.has_weights(model):
                raise UserError(f"stage {spec.task}/{model}: no weights installed "
                                f"(run `orchestrator weights pull {model}`, or choose "
                                f"--model {spec.task}=auto)")
            if not registry.installed(model):
                raise UserError(f"stage {spec.task}/{model}: the model is not installed here")
        known = registry.stage_params(spec.task, model) if spec.params else None
        unknown = sorted(set(spec.params) - set(known)) if known is not None else []
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise UserError(f"stage {spec.task}/{model}: unknown parameter "
                            f"{', '.join(repr(p) for p in unknown)}{hint} "
                            f"(known: {', '.join(known) or 'none'})")


def from_args(args, local: bool = True) -> list[StageSpec]:
    """The stages the pipeline flags of `submit`, `inspect` and `preview` choose; with
    ``local``, checked as the stages of a run on this machine."""
    sets = list(args.sets or [])
    if getattr(args, "field_order", None):
        sets.append(f"{DEINTERLACE}.field_order={args.field_order}")
    specs = build(args.pipeline, args.stages, args.skip, args.model, sets, args.endpoint)
    if local:
        check_runnable(specs)
    return specs


def sizes_from(args) -> dict:
    """The size flags of `submit`, `inspect` and `preview`, as ``make_plan``'s keywords."""
    return {"native": args.native, "scale": args.scale, "max_height": args.max_height}
