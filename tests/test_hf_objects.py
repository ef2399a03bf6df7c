import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification, BertTokenizer

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


def test_a_weight_left_uninitialised_is_zeroed_if_a_bias_else_refused(tiny_bert_dir, tmp_path):
    "transformers leaves some head biases a checkpoint lacks uninitialised (Longformer's MLM head): NaN in, NaN out."
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(tmp_path)
    BertTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="classifier.bias .* set to zero"):
        hf_model = get_hf_objects(tmp_path).hf_model
    assert torch.equal(hf_model.classifier.bias, torch.zeros_like(hf_model.classifier.bias))
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier.weight .* NaN or inf"):
        get_hf_objects(tmp_path)
