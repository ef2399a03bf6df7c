import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from blurlite.hf_objects import get_hf_objects


def test_loads_offline_local_directory(tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_arch, hf_config, hf_tokenizer, hf_model = get_hf_objects(tiny_bert_dir)
    assert hf_arch == "bert"
    assert hf_tokenizer.is_fast
    assert isinstance(hf_model, BertForSequenceClassification)


def test_half_precision_checkpoint_loads_as_float32(tiny_bert_dir, tmp_path):
    half = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, dtype=torch.float16)
    half.save_pretrained(tmp_path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_bert_dir / name).exists():
            (tmp_path / name).write_bytes((tiny_bert_dir / name).read_bytes())
    model = get_hf_objects(tmp_path).hf_model
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_config_kwargs_size_the_head(tiny_bert_dir):
    objs = get_hf_objects(tiny_bert_dir, config_kwargs={"num_labels": 3})
    assert objs.hf_config.num_labels == 3
    assert objs.hf_model.classifier.out_features == 3


def test_given_config_is_not_changed_by_config_kwargs(tiny_bert_dir):
    config = get_hf_objects(tiny_bert_dir).hf_config
    objs = get_hf_objects(tiny_bert_dir, config=config, config_kwargs={"num_labels": 4})
    assert objs.hf_config.num_labels == 4 and config.num_labels == 2


def test_missing_directory_gives_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(OSError, match="not a local model directory") as e:
        get_hf_objects(str(missing))
    assert str(missing) in str(e.value)


def test_unknown_hub_name_offline_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load 'no-such-org/no-such-model'.*local Hugging Face cache"):
        get_hf_objects("no-such-org/no-such-model")
