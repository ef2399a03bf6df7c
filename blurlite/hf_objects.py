"""Load a Hugging Face config, tokenizer and model from a local directory or the local cache."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

__all__ = ["HFObjects", "get_hf_objects"]


class HFObjects(NamedTuple):
    "What `get_hf_objects` returns; unpacks as `hf_arch, hf_config, hf_tokenizer, hf_model`."
    hf_arch: str
    hf_config: PretrainedConfig
    hf_tokenizer: object
    hf_model: torch.nn.Module


def _resolve_error(name: str, cause: Exception) -> OSError:
    "One error that says what was tried for `name` and how to fix it."
    where = os.path.abspath(os.path.expanduser(name))
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hub = "the Hugging Face hub is offline (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face hub could not provide it"
    return OSError(
        f"could not load {name!r}: it is not a local model directory (looked for {where}) and it is not in the "
        f"local Hugging Face cache; {hub}. Pass the path of a directory holding config.json, the tokenizer files "
        f"and the weights (e.g. one written by `save_pretrained`). Cause: {type(cause).__name__}: {cause}"
    )


def _config_with(config: PretrainedConfig, config_kwargs: dict) -> PretrainedConfig:
    "A copy of `config` with `config_kwargs` set (the caller's config is not changed)."
    config = config.__class__.from_dict(config.to_dict())
    for key, value in config_kwargs.items():
        setattr(config, key, value)
    return config


def get_hf_objects(
    pretrained_model_name_or_path,
    model_cls=AutoModelForSequenceClassification,
    config=None,
    tokenizer_cls=None,
    config_kwargs: dict | None = None,
    tokenizer_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
    pretrained: bool = True,
) -> HFObjects:
    """Return `(hf_arch, hf_config, hf_tokenizer, hf_model)` with float32 weights.

    `pretrained=False` builds a new model (random weights) from `config` (default: the directory's config.json)
    with the directory's tokenizer, to train from scratch: the config's vocabulary must hold the tokenizer's
    tokens, and its special-token ids (bos, eos, pad) are the tokenizer's where the tokenizer has them.
    Example: `hf_arch, hf_config, hf_tokenizer, hf_model = get_hf_objects(ckpt_dir, config_kwargs={"num_labels": 3})`;
    `get_hf_objects(tokenizer_dir, model_cls=AutoModelForCausalLM, config=GPT2Config(n_layer=4), pretrained=False)`
    """
    name = os.fspath(pretrained_model_name_or_path)
    config_kwargs, tokenizer_kwargs = dict(config_kwargs or {}), dict(tokenizer_kwargs or {})
    # transformers 5 keeps a checkpoint's fp16/bf16 dtype unless told otherwise: CPU training wants fp32
    model_kwargs = {"dtype": torch.float32, **(model_kwargs or {})}
    if {"num_labels", "id2label"} & set(config_kwargs) or config is not None:
        # the caller sized the head: a checkpoint head of another size is re-initialised (transformers reports it)
        model_kwargs.setdefault("ignore_mismatched_sizes", True)
    looks_like_path = os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)
    if looks_like_path and not os.path.isdir(os.path.expanduser(name)):
        raise _resolve_error(name, FileNotFoundError(f"no directory at {name!r}"))
    try:
        if config is None:
            config = AutoConfig.from_pretrained(name, **config_kwargs)
        elif config_kwargs:
            config = _config_with(config, config_kwargs)
        hf_tokenizer = (tokenizer_cls or AutoTokenizer).from_pretrained(name, **tokenizer_kwargs)
        if not pretrained:
            return _new_model(model_cls, config, hf_tokenizer, model_kwargs)
        hf_model = model_cls.from_pretrained(name, config=config, **model_kwargs)
    except OSError as e:
        raise _resolve_error(name, e) from e
    _check_finite(hf_model, name)
    return HFObjects(config.model_type, config, hf_tokenizer, hf_model)


def _new_model(model_cls, config: PretrainedConfig, hf_tokenizer, model_kwargs: dict) -> HFObjects:
    "A new float32 model of `config` for `hf_tokenizer`: vocabulary checked, special-token ids that do not fit set."
    n_tokens = len(hf_tokenizer)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and vocab_size < n_tokens:
        raise ValueError(f"the config's vocab_size={vocab_size} is smaller than the tokenizer's {n_tokens} tokens: "
                         f"build the config with vocab_size={n_tokens}")
    config = config.__class__.from_dict(config.to_dict())  # the caller's config is not changed
    config._name_or_path = ""  # a new model: not the weights of the directory its config may come from
    for kind in ("bos", "eos", "pad"):  # the tokenizer's own ids (a config's defaults belong to another vocabulary)
        token_id = getattr(hf_tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            setattr(config, f"{kind}_token_id", token_id)
    kwargs = {k: v for k, v in model_kwargs.items() if k not in ("ignore_mismatched_sizes", "use_safetensors")}
    hf_model = model_cls.from_config(config, **kwargs).float()
    hf_model.generation_config = type(hf_model.generation_config).from_model_config(config)
    return HFObjects(config.model_type, hf_model.config, hf_tokenizer, hf_model)


def _check_finite(hf_model: torch.nn.Module, name: str) -> None:
    """Zero a bias the checkpoint lacks that transformers left uninitialised (NaN/inf: e.g. Longformer's MLM head
    bias loaded from a base-model checkpoint), with a warning; any other non-finite weight is an error."""
    import warnings

    for param_name, p in hf_model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            if param_name.endswith("bias"):
                with torch.no_grad():
                    p.zero_()
                warnings.warn(f"{param_name} of {name!r} was not finite after loading (a head bias the checkpoint "
                              "does not hold, left uninitialised by transformers): set to zero", stacklevel=3)
            else:
                raise ValueError(f"{param_name} of {name!r} holds NaN or inf values: the checkpoint is damaged, or "
                                 "transformers left a weight it lacks uninitialised; re-save the checkpoint")
