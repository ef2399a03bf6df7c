"""Pickle-free artifacts: `learn.save_pretrained(dir)` and `load_pretrained_learner(dir)`.

A directory holds the HF model (safetensors) and tokenizer, written by their `save_pretrained`, the labels in the
model config (`id2label`/`label2id`), and `blurlite.json`: the task name, the data settings the task needs to
rebuild its transforms, the versions it was written with and a SHA-256 of every file. Loading reads JSON and
safetensors only, and checks every file before building anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from fastai.learner import Learner
from fastcore.basics import patch

from .adapters import has_adapters, merged_model, remove_weights, save_adapter
from .data import find_hf_transform
from .ranks import run_on_rank0, world_size
from .tasks import task_for
from .versions import IncompatibleArtifactError, check_versions, stack_versions

__all__ = ["SETTINGS_FILE", "FORMAT_VERSION", "save_pretrained", "read_settings", "block_settings"]

SETTINGS_FILE = "blurlite.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    "The process's umask (read by setting it, then putting it back)."
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_atomically(path: Path, text: str) -> None:
    "Write `text` to `path` through a temporary file, so that `path` is never partial."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file should read like its neighbours
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def block_settings(dls) -> dict:
    """The text block's arguments that shape the model's inputs: max_length, padding, truncation, tok_kwargs (and
    long_texts, stride, window_agg with windows)."""
    tfm = find_hf_transform(dls)
    settings = {"max_length": tfm.max_length, "padding": "max_length" if getattr(dls.train, "pad_to", None) else True,
                "truncation": tfm.truncation, "tok_kwargs": tfm.tok_kwargs}
    if tfm.long_texts != "truncate":  # written only when set: other blocks take no such arguments
        settings.update(long_texts=tfm.long_texts, stride=tfm.stride, window_agg=tfm.window_agg)
    return settings


def _unwrapped_hf_model(learn: Learner):
    model = learn.model
    model = getattr(model, "module", model)  # DistributedDataParallel and friends
    return model.hf_model


@patch
def save_pretrained(self: Learner, path, merge_adapters: bool = False) -> Path:
    """Write a pickle-free artifact to directory `path`; `load_pretrained_learner(path)` and
    `transformers.pipeline(task, model=path)` load it. Returns `path`.

    The tokenizer is saved with `model_max_length` set to the block's `max_length`, so that a pipeline called
    with the task's `pipeline_kwargs` (`truncation=True` for text classification; recorded in `blurlite.json`)
    truncates as the learner does. `blurlite.json` is written last: a directory without it is an unfinished save. In a
    distributed run rank 0 writes, and every rank returns once the directory is complete.

    An adapter (`peft`) learner writes its adapter in peft's format (`adapter_config.json`,
    `adapter_model.safetensors`: adapters and head, no base weights), which `load_pretrained_learner` and peft's
    `AutoPeftModel...from_pretrained(path)` load onto the base model; `merge_adapters=True` writes a plain
    transformers model with the adapters merged in instead (the learner keeps its adapters).
    """
    if merge_adapters and not has_adapters(self):
        raise ValueError("merge_adapters=True is for learners with adapters (hf_learner(..., peft_config=...)); "
                         "this learner's whole model is saved as it is")
    if world_size() > 1:
        run_on_rank0(lambda: _save_pretrained(self, Path(path), merge_adapters), "save_pretrained")
        return Path(path)
    return _save_pretrained(self, Path(path), merge_adapters)


def _save_pretrained(self: Learner, path: Path, merge_adapters: bool = False) -> Path:
    task = task_for(self.dls)
    hf_model, tokenizer = _unwrapped_hf_model(self), find_hf_transform(self.dls).hf_tokenizer
    task.prepare_model(self.dls, hf_model)  # labels into the config
    path.mkdir(parents=True, exist_ok=True)
    (path / SETTINGS_FILE).unlink(missing_ok=True)
    adapter = None
    if has_adapters(hf_model) and not merge_adapters:
        remove_weights(path, adapter=True)
        adapter = save_adapter(hf_model, path)
    else:
        remove_weights(path, adapter=False)
        (merged_model(hf_model) if has_adapters(hf_model) else hf_model).save_pretrained(path)
    tokenizer.save_pretrained(path)
    for weights in path.glob("*.safetensors"):  # transformers writes them private (0600), unlike its other files
        os.chmod(weights, 0o666 & ~_umask())
    block = block_settings(self.dls)
    if block["max_length"]:
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        _write_atomically(config_file, json.dumps({**config, "model_max_length": block["max_length"]}, indent=2))
    settings = {"format": FORMAT_VERSION, "task": task.name, "versions": stack_versions(), "block": block,
                "bs": self.dls.bs, "task_settings": task.settings(self.dls),
                # how transformers answers as the learner: `pipeline(task, model=dir, **kwargs)`
                "pipeline": {"task": task.pipeline, "kwargs": dict(task.pipeline_kwargs)} if task.pipeline else None,
                **({"adapter": adapter} if adapter else {}),  # base model and its shape: checked when loaded
                "files": {f.name: _sha256(f) for f in sorted(path.iterdir())
                          if f.is_file() and f.name != SETTINGS_FILE and not f.name.startswith(".")}}
    _write_atomically(path / SETTINGS_FILE, json.dumps(settings, indent=2))
    return path


def read_settings(path: Path) -> dict:
    "`blurlite.json` of `path`, after checking the format, the versions and every file's checksum."
    if not path.is_dir():
        raise FileNotFoundError(f"no directory at {str(path)!r}: pass the directory learn.save_pretrained wrote")
    settings_file = path / SETTINGS_FILE
    if not settings_file.exists():
        raise FileNotFoundError(f"{str(path)!r} has no {SETTINGS_FILE}: it is not a blurlite save_pretrained "
                                "directory, or the save did not finish; save it again")
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
        fmt, files = settings["format"], settings["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{settings_file} is corrupted ({e}); save the learner again") from e
    if fmt > FORMAT_VERSION:
        raise IncompatibleArtifactError(f"{str(path)!r} uses blurlite's artifact format {fmt}, this blurlite reads up "
                                        f"to {FORMAT_VERSION}: upgrade blurlite")
    check_versions(settings.get("versions", {}), repr(str(path)), pickled=False)
    for name, digest in files.items():
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path)!r} is missing {name}: copy the whole directory, or save it again")
        if _sha256(path / name) != digest:
            raise ValueError(f"{path / name} is truncated or corrupted (its checksum differs from the one saved); "
                             "copy it again or save the learner again")
    return settings
