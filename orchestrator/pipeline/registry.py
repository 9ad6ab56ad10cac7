"""Which models exist for each task, and which of them can run here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from services.stagekit.weights import weights_present

# The video pipeline's tasks, in the order a restoration runs them: the best measured by
# bench/order.py (README, "The order of the stages"); specs.ORDER_RULES says what must hold.
# `deinterlace` runs only for interlaced input (plan.py drops it for progressive input).
TASKS = ("deinterlace", "analog", "outpaint", "deblur", "colorize", "denoise", "superres", "interpolate")
IMAGE_TASKS = ("inpaint",)

# `auto` takes the first model whose weights are present, then the classical one.
NEURAL = {
    "analog": ("tape",),
    "outpaint": ("propainter",),
    "colorize": ("tcvc", "ddcolor"),
    "deblur": ("mmprnn", "uformer"),
    "denoise": ("rvrt",),
    "superres": ("psrt", "diffbir"),
    "interpolate": ("sfadacof",),
    "inpaint": ("mat",),
}
CLASSICAL = "classical"


@dataclass(frozen=True)
class ModelStatus:
    task: str
    model: str
    installed: bool       # its code is in this installation
    weights: bool         # its weights are in the store (always true for classical)
    device: str

    @property
    def runnable(self) -> bool:
        return self.installed and self.weights


def _installed(model: str) -> bool:
    try:
        importlib.import_module(f"services.{model}.stage")
        return True
    except ImportError:
        return False


def _device() -> str:
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "none (torch not installed)"


def models(task: str) -> tuple[str, ...]:
    return (*NEURAL.get(task, ()), CLASSICAL)


def status(task: str, model: str) -> ModelStatus:
    if model == CLASSICAL:
        return ModelStatus(task, model, _installed(CLASSICAL), True, "cpu")
    return ModelStatus(task, model, _installed(model), weights_present(model), _device())


def resolve(task: str, model: str) -> str:
    """The concrete model for ``model`` ('auto' or a name) of ``task``."""
    if model != "auto":
        if model not in models(task):
            raise ValueError(f"no model '{model}' for task '{task}' "
                             f"(choose {', '.join(models(task))} or auto)")
        return model
    for candidate in NEURAL.get(task, ()):
        # The weights first: looking for them is cheap, importing a model's code is not.
        if has_weights(candidate) and _installed(candidate):
            return candidate
    return CLASSICAL


def has_weights(model: str) -> bool:
    return model == CLASSICAL or weights_present(model)


def installed(model: str) -> bool:
    """Whether the model's code is in this installation (importing it: not free)."""
    return _installed(model)


# Classical stages that do another task's job: rebuilding a band is inpainting it.
CLASSICAL_STANDS_IN = {"inpaint": "outpaint"}


def stage_params(task: str, model: str) -> tuple[str, ...] | None:
    """The parameters the stage of ``model`` for ``task`` declares, read from its class
    (nothing is built or loaded); None when it does not declare them."""
    from services.stagekit.stage import Stage
    try:
        module = importlib.import_module(f"services.{model}.stage")
    except ImportError:
        return None
    wanted = _served_task(task, model)
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, Stage) and value.task == wanted
                and value.params is not None):
            return tuple(value.params)
    return None


def _served_task(task: str, model: str) -> str:
    return CLASSICAL_STANDS_IN.get(task, task) if model == CLASSICAL else task


def create_local(task: str, model: str, device: str = "auto", precision: str | None = None):
    """Build the in-process Stage of ``model`` for ``task``, a neural one in ``precision``
    (None: $RESTORATION_PRECISION, else 'auto'); a classical model runs in float32 whatever
    a job asks. Passed, not put in the environment: two jobs of one service may differ."""
    from services.stagekit.device import takes_precision
    module = importlib.import_module(f"services.{model}.stage")
    wanted = {"precision": precision} if precision and takes_precision(module.create_stage) else {}
    made = module.create_stage(weights=None, device=device, arch=None, **wanted)
    stages = made if isinstance(made, list) else [made]
    wanted = _served_task(task, model)
    for stage in stages:
        if stage.task == wanted:
            return stage
    raise ValueError(f"model '{model}' serves no '{task}' stage")
