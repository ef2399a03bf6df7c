"""PEFT adapters (LoRA and the rest of `peft`): wrap a model, count what trains, merge, save and load adapters.

`hf_learner(dls, peft_config=LoraConfig(...))` wraps the model with `peft.get_peft_model`: the base weights are
frozen; the adapters and the task's head (the model's modules outside its base model: `classifier`, ...) train and
are saved. A task says which `peft` task type it is (`HFTask.peft_task_type`); without one (masked LM), or with
`HFTask.adapter_head=False` (e.g. a language-model head tied to the input embeddings), only the adapters train. `peft` is optional: it is imported here, when an adapter is asked for.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

from fastai.learner import Learner
from fastcore.basics import patch
from torch import nn

__all__ = ["add_adapters", "default_lora_config", "has_adapters", "merged_model", "PEFT_INSTALL"]

PEFT_INSTALL = 'pip install "blurlite[peft]"'
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# what a base-model check compares: an adapter fits only a base of the same architecture and size
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "vocab_size")


def require_peft():
    "The `peft` module, or an `ImportError` that says how to install it."
    try:
        import peft
    except ImportError as e:
        raise ImportError(f"adapters (peft_config=..., --lora-r, adapter artifacts) need the peft library: "
                          f"{PEFT_INSTALL}") from e
    return peft


def has_adapters(model) -> bool:
    "True when `model` (a learner, an `HFModelWrapper` or an HF model) is a `peft` model."
    model = getattr(model, "model", model) if isinstance(model, Learner) else model
    model = getattr(model, "module", model)  # DistributedDataParallel
    model = getattr(model, "hf_model", model)
    peft = sys.modules.get("peft")  # a model can be a PeftModel only once peft is imported
    return peft is not None and isinstance(model, peft.PeftModel)


def plain_model(hf_model: nn.Module) -> nn.Module:
    """The transformers model inside a `peft` model (its adapters injected: it answers as the peft model), for
    code that wants a transformers class, such as the pipelines; any other model as it is."""
    return hf_model.get_base_model() if has_adapters(hf_model) else hf_model


def _carries_adapter_layers(hf_model: nn.Module) -> bool:
    peft = sys.modules.get("peft")
    if peft is None:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in hf_model.modules())


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def head_modules(hf_model: nn.Module) -> list[str]:
    """The task head, as `hf_splitter`'s last group has it: the model's modules with weights outside its base model
    (`classifier`, ...) and the base model's after its transformer blocks (BERT's `pooler`, a final norm)."""
    prefix = getattr(hf_model, "base_model_prefix", None)
    heads = [name for name, module in hf_model.named_children() if name != prefix and _has_weights(module)]
    base = getattr(hf_model, prefix, None) if prefix else None
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)] if base is not None else []
    if not lists:
        return heads
    blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    children = list(base.named_children())
    at = next((i for i, (_, c) in enumerate(children) if any(m is blocks for m in c.modules())), len(children))
    return [f"{prefix}.{name}" for name, child in children[at + 1:] if _has_weights(child)] + heads


def _checkpoint_keys(hf_model: nn.Module) -> set[str] | None:
    "The weight names in the safetensors files the model was loaded from (names only); None when not known."
    from safetensors import safe_open

    where = getattr(getattr(hf_model, "config", None), "_name_or_path", "") or ""
    files = sorted(Path(where).glob("*.safetensors")) if where and os.path.isdir(where) else []
    if not files:
        return None
    keys = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys |= set(st.keys())
    return keys


def new_modules(hf_model: nn.Module) -> list[str]:
    """The modules whose weights the checkpoint lacks (initialized at random when loaded, e.g. a pooler or an MLM
    head): frozen under adapters and not in the adapter file, they would differ when the artifact is loaded, so
    they are trained and saved. A new module whose weights are tied to others (an MLM decoder tied to the input
    embeddings) cannot be saved apart: an error says so."""
    keys = _checkpoint_keys(hf_model)
    if keys is None:
        return []
    prefix = getattr(hf_model, "base_model_prefix", "")
    names = dict(hf_model.named_parameters())  # tied weights once, by their first name
    missing = [n for n in names if n not in keys and not (prefix and n.startswith(prefix + ".")
                                                          and n[len(prefix) + 1:] in keys)]
    owners = sorted({n.rsplit(".", 1)[0] for n in missing if "." in n})
    for owner in owners:
        inside = {id(p) for n, p in names.items() if n.startswith(owner + ".")}
        tied = [n for n, p in hf_model.get_submodule(owner).named_parameters() if id(p) not in inside]
        if tied:
            raise ValueError(f"the checkpoint has no weights for {owner} (initialized at random when loaded), and "
                             f"its {tied[0]} is tied to weights outside it: adapters would keep it random and "
                             "could not save it. Fine-tune the whole model, or load a checkpoint that has these "
                             "weights (e.g. a masked-LM checkpoint for masked LM)")
    return owners


def default_lora_config(hf_model: nn.Module, r: int = 8, lora_alpha: int | None = None, lora_dropout: float = 0.1,
                        target_modules=None):
    """A `LoraConfig` for `hf_model`: rank `r`, `lora_alpha` 2r by default, and peft's target modules for the
    model's type where peft has them (BERT: query and value), else every linear layer of the encoder.

    Example: `hf_learner(dls, peft_config=default_lora_config(dls.hf_model, r=8))`.
    """
    require_peft()
    from peft import LoraConfig
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    if r < 1:
        raise ValueError(f"the LoRA rank r must be at least 1, got {r}")
    if target_modules is None:
        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        target_modules = PEFT_TARGETS.get(model_type, "all-linear")
    return LoraConfig(r=r, lora_alpha=2 * r if lora_alpha is None else lora_alpha, lora_dropout=lora_dropout,
                      target_modules=target_modules)


def _config_for_task(peft_config, hf_model: nn.Module, task):
    "A copy of `peft_config` with the task's type filled in and the head among the modules to save."
    peft_config = copy.deepcopy(peft_config)  # the caller's config is reused for other models: not changed
    wanted = task.peft_task_type
    given = getattr(peft_config, "task_type", None)
    given = getattr(given, "value", given)  # peft's TaskType is a str enum
    if given is None:
        peft_config.task_type = wanted
    elif given != wanted:
        raise ValueError(f"peft_config.task_type is {given!r}, but the {task.name} task trains as "
                         f"{wanted!r}: leave task_type out (blurlite fills it in) or set it to {wanted!r}")
    if hasattr(peft_config, "modules_to_save"):
        # the head is new (random) or task-specific, and so is any module the checkpoint lacks: trained, and saved
        # with the adapter, or the artifact would lose them
        wanted_modules = [*(head_modules(hf_model) if wanted is not None and task.adapter_head else []),
                          *new_modules(hf_model)]
        # a module inside another one to save is saved with it (peft cannot wrap both)
        wanted_modules = [m for m in dict.fromkeys(wanted_modules)
                          if not any(m.startswith(other + ".") for other in wanted_modules)]
        extra = [m for m in wanted_modules if m not in (peft_config.modules_to_save or [])]
        peft_config.modules_to_save = [*(peft_config.modules_to_save or []), *extra] or None
    return peft_config


def adapter_task_type(hf_model: nn.Module) -> str | None:
    "The peft task type of peft model `hf_model`'s active adapter (None: no task type)."
    task_type = hf_model.peft_config[hf_model.active_adapter].task_type
    return getattr(task_type, "value", task_type)


def check_adapter_task(hf_model: nn.Module, task) -> None:
    "Raise if peft model `hf_model` was made for another task type than `task`'s."
    if adapter_task_type(hf_model) != task.peft_task_type:
        raise ValueError(f"the model's adapter is a {adapter_task_type(hf_model)!r} adapter, but the {task.name} "
                         f"task trains {task.peft_task_type!r} adapters: it is another task's adapter")


def add_adapters(hf_model: nn.Module, peft_config, task) -> nn.Module:
    """`hf_model` wrapped by `peft.get_peft_model` for `task` (an `HFTask`): base weights frozen, the adapters of
    `peft_config` (any peft config) and the task's head trainable. The model is changed in place, as peft does."""
    peft = require_peft()
    if not isinstance(peft_config, peft.PeftConfig):
        raise TypeError(f"peft_config must be a peft config (e.g. peft.LoraConfig(r=8)), got "
                        f"{type(peft_config).__name__}")
    if has_adapters(hf_model) or _carries_adapter_layers(hf_model):
        raise ValueError("this model already carries adapters (peft changes the model in place): load the model "
                         "again for a new adapter learner, or pass the peft model without peft_config")
    return peft.get_peft_model(hf_model, _config_for_task(peft_config, hf_model, task))


def merged_model(hf_model: nn.Module) -> nn.Module:
    "A plain transformers model with the adapters of peft model `hf_model` merged in: a copy, `hf_model` keeps them."
    if not has_adapters(hf_model):
        raise ValueError("this model has no adapters to merge")
    if not hasattr(hf_model.base_model, "merge_and_unload"):  # prompt tuning and the like add inputs, not weights
        kind = hf_model.peft_config[hf_model.active_adapter].peft_type
        raise ValueError(f"{kind} adapters cannot be merged into the weights: save the adapter (save_pretrained "
                         "without merge_adapters)")
    return copy.deepcopy(hf_model).merge_and_unload()


@patch
def hf_parameter_counts(self: Learner) -> dict:
    """`{"trainable", "total", "trainable_fraction"}`: the parameters that train now (after `freeze()`, fewer),
    against all of the model's. Example: `print(learn.hf_parameter_counts())`."""
    params = list(self.model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "total": total, "trainable_fraction": trainable / max(total, 1)}


# saving and loading: the adapter's part of `save_pretrained` / `load_pretrained_learner`
def _base_name_or_path(hf_model) -> str:
    "Where the base model was loaded from: an absolute path for a local directory, so that the artifact can move."
    name = hf_model.peft_config[hf_model.active_adapter].base_model_name_or_path or ""
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def save_adapter(hf_model: nn.Module, path: Path) -> dict:
    """Write the adapter of peft model `hf_model` in peft's format (`adapter_config.json`,
    `adapter_model.safetensors`) and the model config (labels), and return `blurlite.json`'s `adapter` entry."""
    config, base = hf_model.config, _base_name_or_path(hf_model)
    hf_model.save_pretrained(path)  # PeftModel.save_pretrained: the adapter and the head only
    adapter_file = path / ADAPTER_CONFIG
    adapter = json.loads(adapter_file.read_text(encoding="utf-8"))
    if base and adapter.get("base_model_name_or_path") != base:  # peft writes the path as it was given
        adapter["base_model_name_or_path"] = base
        adapter_file.write_text(json.dumps(adapter, indent=2, sort_keys=True), encoding="utf-8")
    config.save_pretrained(path)
    return {"base_model": base, "peft_type": adapter.get("peft_type"), "task_type": adapter.get("task_type"),
            "base_config": {k: getattr(config, k, None) for k in _SHAPE_KEYS}}


def remove_weights(path: Path, adapter: bool) -> None:
    "Remove the other kind's weights from `path`: a full model's when an adapter is written there, and back."
    names = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] if not adapter else ["model.safetensors", "model.safetensors.index.json"]
    for name in names:
        (path / name).unlink(missing_ok=True)
    if adapter:
        for shard in path.glob("model-*-of-*.safetensors"):
            shard.unlink()


def _check_base(base: str, entry: dict, task, artifact: Path) -> None:
    "Check that `base` is a model of the architecture and size the adapter was trained on, before loading it."
    from transformers import AutoConfig

    if not base or not os.path.isdir(base):
        raise FileNotFoundError(f"the base model of adapter {str(artifact)!r} is not at {base!r}: pass "
                                "load_pretrained_learner(path, base_model=DIR) (blurlite predict --base-model DIR) "
                                "with a local copy of it")
    if os.path.isfile(os.path.join(base, ADAPTER_CONFIG)):
        raise ValueError(f"base model {base!r} is an adapter itself: pass the model the adapter was trained on")
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise ValueError(f"base model {base!r} has no readable config.json ({e})") from e
    saved = entry.get("base_config", {})
    differ = [f"{k} {getattr(config, k, None)!r} (the adapter's base: {v!r})" for k, v in saved.items()
              if v is not None and getattr(config, k, None) != v]
    if differ:
        raise ValueError(f"base model {base!r} does not fit adapter {str(artifact)!r}: " + ", ".join(differ)
                         + "; pass the model the adapter was trained on")
    task_type = entry.get("task_type")
    if task_type != task.peft_task_type:
        raise ValueError(f"adapter {str(artifact)!r} was trained as {task_type!r} but its task {task.name} "
                         f"takes {task.peft_task_type!r}: it is another task's adapter")


def load_adapter_objects(path: Path, settings: dict, task, base_model=None):
    """`HFObjects` for an adapter artifact: the base model from `base_model` (default: the one the adapter names),
    checked against the adapter first, with the artifact's config (labels) and tokenizer, and the adapter on it."""
    require_peft()
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    from .hf_objects import get_hf_objects

    entry = settings["adapter"]
    try:
        adapter = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / ADAPTER_CONFIG} cannot be read ({e}); save the learner again") from e
    if adapter.get("task_type") != entry.get("task_type"):
        raise ValueError(f"{path / ADAPTER_CONFIG} is a {adapter.get('task_type')!r} adapter, "
                         f"{path / 'blurlite.json'} says {entry.get('task_type')!r}: save the learner again")
    base = os.fspath(base_model) if base_model is not None else (entry.get("base_model")
                                                                  or adapter.get("base_model_name_or_path"))
    _check_base(base, entry, task, path)
    config = AutoConfig.from_pretrained(str(path))  # the artifact's: labels, problem type
    objects = get_hf_objects(base, model_cls=task.auto_model, config=config, model_kwargs={"use_safetensors": True})
    model = PeftModel.from_pretrained(objects.hf_model, str(path), is_trainable=True)  # the loaded learner can train on
    model.peft_config[model.active_adapter].base_model_name_or_path = os.path.abspath(base)  # a new save names it
    return objects._replace(hf_model=model, hf_tokenizer=AutoTokenizer.from_pretrained(str(path)))
