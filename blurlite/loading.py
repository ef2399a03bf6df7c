"""`load_pretrained_learner(dir)`: an inference-ready learner from a `save_pretrained` artifact, nothing unpickled."""
from __future__ import annotations

from pathlib import Path

from fastai.learner import Learner

from .adapters import load_adapter_objects
from .hf_objects import get_hf_objects
from .learner import hf_learner
from .serialization import read_settings
from .tasks import get_task

__all__ = ["load_pretrained_learner"]


def load_pretrained_learner(path, cpu: bool = True, base_model=None) -> Learner:
    """An inference-ready `Learner` from a `save_pretrained` directory; nothing is unpickled.

    The task's settings (labels, block arguments) come from `blurlite.json`, checked file by file first.
    An adapter artifact is loaded onto its base model: `base_model` (a directory), else the one its
    `adapter_config.json` names; the base is checked against the adapter (architecture, size, task) first.
    Example: `learn = load_pretrained_learner("my-model"); learn.predict("a text")`
    """
    path = Path(path)
    settings = read_settings(path)
    task = get_task(settings["task"])
    if settings.get("adapter"):
        hf_objects = load_adapter_objects(path, settings, task, base_model)
    else:
        if base_model is not None:
            raise ValueError(f"{str(path)!r} holds a whole model, not an adapter: it takes no base_model")
        hf_objects = get_hf_objects(str(path), model_cls=task.auto_model, model_kwargs={"use_safetensors": True})
    dls = task.inference_dls(hf_objects, settings["block"], settings["task_settings"], settings.get("bs", 16))
    learn = hf_learner(dls, hf_objects.hf_model)
    if cpu:
        learn.dls.cpu()
        learn.model.cpu()
    learn.model.eval()
    return learn
