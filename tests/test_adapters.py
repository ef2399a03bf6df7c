"""PEFT adapters: hf_learner(peft_config=...) trains adapters and head only, saves peft's format or a merged model,
loads both kinds (blurlite, peft's AutoPeftModel, transformers' pipeline), export/load_learner, the command line."""
import hashlib
import json
import shutil
import sys

import pytest
import torch
from conftest import TASK_EXAMPLES, VOCAB, task_checkpoint, child_process_env, save_tiny_bert, task_example, tiny_bert_config
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.learner import load_learner
from fastai.torch_core import set_seed
from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizer, pipeline

import peft  # a dev requirement (blurlite's `peft` extra); the rest of blurlite runs without it
from peft import LoraConfig

import blurlite.cli as cli
from blurlite.all import (HFModelWrapper, default_lora_config, get_hf_objects, get_task, has_adapters, hf_learner,
                          load_pretrained_learner, merged_model, registered_tasks)

TASKS = [t for t in registered_tasks() if t.name in TASK_EXAMPLES]


def adapter_dls(task, base_dir, n=48):
    return task.from_df(task_example(task)["frame"](n), base_dir, valid_col="is_valid", bs=8, max_length=24, seed=0)


def base_weights(learn) -> dict:
    "Copies of the weights peft froze (every parameter that is not an adapter's or the trained head's)."
    return {n: p.detach().clone() for n, p in learn.model.named_parameters() if not p.requires_grad}


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory):
    "A tiny BERT checkpoint with a masked-LM head (and no pooler), as BERT's pretraining checkpoints are."
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), BertForMaskedLM, seed=1)


@pytest.fixture(scope="module", params=TASKS, ids=[t.name for t in TASKS])
def trained(request, tiny_mlm_dir):
    "An adapter learner of each task (LoRA r=4), trained one epoch; the base weights from before training."
    task = request.param
    set_seed(0)
    base = tiny_mlm_dir if task.peft_task_type is None else task_checkpoint(request, task)  # MLM: one with its head
    learn = hf_learner(adapter_dls(task, base), peft_config=LoraConfig(r=4, lora_alpha=8))
    before = base_weights(learn)
    adapters = {n: p.detach().clone() for n, p in learn.model.named_parameters() if p.requires_grad}
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-2)
    return task, learn, before, adapters


def test_training_changes_adapters_and_head_only(trained):
    task, learn, before, adapters = trained
    after = dict(learn.model.named_parameters())
    assert all(torch.equal(after[n], w) for n, w in before.items())  # the base did not move
    changed = {n for n, w in adapters.items() if not torch.equal(after[n], w)}
    assert any("lora_B" in n for n in changed)  # LoRA's B starts at zero: trained, it is not
    heads = {n for n in adapters if "modules_to_save" in n}
    assert bool(heads) == (task.peft_task_type is not None and task.adapter_head) and heads <= changed  # LMs: adapters only


def test_the_task_type_is_filled_in_and_the_head_is_saved(trained):
    task, learn, _, _ = trained
    config = learn.model.hf_model.peft_config["default"]
    assert getattr(config.task_type, "value", config.task_type) == task.peft_task_type
    if not task.adapter_head:  # causal LM: the output layer is tied to the input embeddings, not saved apart
        assert not config.modules_to_save
    elif task.peft_task_type is not None:  # the head: the classifier, and BERT's pooler where the model has one
        pooler = ["bert.pooler"] if task.peft_task_type == "SEQ_CLS" else []
        head = "qa_outputs" if task.peft_task_type == "QUESTION_ANS" else "classifier"
        assert {head, *pooler} <= set(config.modules_to_save)


def test_parameter_counts_report_a_small_trainable_fraction(trained):
    _, learn, _, _ = trained
    counts = learn.hf_parameter_counts()
    assert (counts["trainable"], counts["total"]) == learn.model.hf_model.get_nb_trainable_parameters()
    assert 0 < counts["trainable_fraction"] < 0.1


def test_freeze_trains_the_head_unfreeze_the_adapters_never_the_base(trained):
    task, learn, before, _ = trained
    learn.create_opt()
    n_groups = len(learn.opt.param_lists)
    assert n_groups == len(learn.splitter(learn.model)) >= 2
    optimised = {id(p) for g in learn.opt.param_lists for p in g}
    named = dict(learn.model.named_parameters())
    assert not any(id(named[n]) in optimised for n in before)  # base weights are not given to the optimizer
    learn.freeze()
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all(("modules_to_save" in n) or task.peft_task_type is None or not task.adapter_head
                             for n in trainable)
    learn.unfreeze()
    assert not any(named[n].requires_grad for n in before)
    assert any("lora_A" in n for n, p in named.items() if p.requires_grad)


def test_saved_adapter_is_small_and_loads_with_the_same_answers(trained, tmp_path):
    task, learn, _, _ = trained
    texts = task_example(task)["texts"]
    out = learn.save_pretrained(tmp_path / "adapter")
    names = {f.name for f in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "blurlite.json"} <= names
    assert "model.safetensors" not in names
    assert json.loads((out / "blurlite.json").read_text())["adapter"]["task_type"] == task.peft_task_type
    loaded = load_pretrained_learner(out)
    assert has_adapters(loaded)
    assert json.dumps(task.predict_json(loaded, texts)) == json.dumps(task.predict_json(learn, texts))


def test_merged_artifact_is_a_plain_model_that_the_pipeline_answers_like_the_learner(trained, tmp_path):
    task, learn, _, _ = trained
    example = task_example(task)
    out = learn.save_pretrained(tmp_path / "merged", merge_adapters=True)
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert has_adapters(learn)  # the learner keeps its adapters
    loaded = load_pretrained_learner(out)
    assert not has_adapters(loaded)
    ours = task.predict_json(learn, example["texts"])
    reloaded = task.predict_json(loaded, example["texts"])
    # question answering has no transformers-5 pipeline: test_question_answering checks its answers against 4.57.6's
    theirs = [pipeline(task.pipeline, model=str(out))(example["texts"], **example["pipeline_kwargs"])] \
        if task.pipeline else []
    for other in (*theirs, reloaded):  # merged weights: the same answers up to float rounding
        assert _labels(ours) == _labels(other)
        assert _scores(ours) == pytest.approx(_scores(other), abs=1e-4)


def _flat(results):
    for r in results:
        if isinstance(r, list):
            yield from _flat(r)
        else:
            yield r


def _labels(results):
    return [r.get("label", r.get("entity_group", r.get("token_str", r.get("answer", r.get("generated_text")))))
            for r in _flat(results)]


def _scores(results):
    return [float(r["score"]) for r in _flat(results) if "score" in r]  # generated text has none


def test_export_and_load_learner_keep_the_adapters(trained, tmp_path):
    task, learn, _, _ = trained
    texts = task_example(task)["texts"]
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert has_adapters(loaded)
    assert json.dumps(task.predict_json(loaded, texts)) == json.dumps(task.predict_json(learn, texts))


def test_peft_auto_model_loads_the_adapter_artifact(tiny_bert_dir, tmp_path):
    "peft's own loader reads the artifact: base model from adapter_config.json, adapter and head from the directory."
    from peft import AutoPeftModelForSequenceClassification

    task = get_task("text-classification")
    set_seed(0)
    learn = hf_learner(adapter_dls(task, tiny_bert_dir), peft_config=LoraConfig(r=4))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    out = learn.save_pretrained(tmp_path / "adapter")
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(out)).eval()
    batch = learn.dls.one_batch()[0]
    learn.model.eval()
    with torch.no_grad():
        expected = learn.model(batch).logits
        got = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    torch.testing.assert_close(got, expected.as_subclass(torch.Tensor), atol=1e-5, rtol=1e-5)


def test_forward_keys_of_a_peft_model_come_from_its_base_model(tiny_bert_dir):
    "A peft model's forward names a few inputs (the rest go through **kwargs): token_type_ids must still reach it."
    hf_model = get_hf_objects(tiny_bert_dir).hf_model
    wrapped = HFModelWrapper(peft.get_peft_model(hf_model, LoraConfig(r=4, task_type="SEQ_CLS"))).eval()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3, 7, 3]]), "attention_mask": torch.ones(1, 6, dtype=torch.long),
             "token_type_ids": torch.tensor([[0, 0, 0, 0, 1, 1]]), "not_an_input": torch.zeros(1)}
    assert set(wrapped.model_inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids"}


def test_a_peft_config_is_copied_not_changed(tiny_bert_dir):
    config = LoraConfig(r=4)
    hf_learner(adapter_dls(get_task("text-classification"), tiny_bert_dir), peft_config=config)
    assert config.task_type is None and config.modules_to_save is None


def test_bad_adapter_requests_fail_clearly(tiny_bert_dir):
    task = get_task("text-classification")
    dls = adapter_dls(task, tiny_bert_dir)
    with pytest.raises(ValueError, match="task_type is 'TOKEN_CLS'.*SEQ_CLS"):
        hf_learner(dls, peft_config=LoraConfig(r=4, task_type="TOKEN_CLS"))
    with pytest.raises(TypeError, match="peft config"):
        hf_learner(dls, peft_config={"r": 4})
    hf_learner(dls, peft_config=LoraConfig(r=4))
    with pytest.raises(ValueError, match="already carries adapters"):
        hf_learner(dls, peft_config=LoraConfig(r=4))  # dls.hf_model was changed in place by the first
    other = peft.get_peft_model(get_hf_objects(tiny_bert_dir).hf_model, LoraConfig(r=4, task_type="TOKEN_CLS"))
    with pytest.raises(ValueError, match="another task's adapter"):
        hf_learner(adapter_dls(task, tiny_bert_dir), other)
    with pytest.raises(ValueError, match="merge_adapters=True is for learners with adapters"):
        hf_learner(adapter_dls(task, tiny_bert_dir)).save_pretrained("unused", merge_adapters=True)


def test_without_peft_the_error_says_how_to_install_it(tiny_bert_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "blurlite\[peft\]"'):
        hf_learner(adapter_dls(get_task("text-classification"), tiny_bert_dir), peft_config=object())


@pytest.fixture(scope="module")
def adapter_on_own_base(tmp_path_factory):
    "A classification adapter saved from a base model in a directory of its own (to move or delete)."
    root = tmp_path_factory.mktemp("own-base")
    torch.manual_seed(0)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(root / "base")
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(root / "base")
    learn = hf_learner(adapter_dls(get_task("text-classification"), root / "base"), peft_config=LoraConfig(r=4))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    return root, learn.save_pretrained(root / "adapter"), learn


def test_a_missing_base_model_is_a_clear_error_and_base_model_points_to_a_copy(adapter_on_own_base, tmp_path):
    root, adapter, learn = adapter_on_own_base
    moved = tmp_path / "moved-base"
    shutil.copytree(root / "base", moved)
    shutil.rmtree(root / "base")
    try:
        with pytest.raises(FileNotFoundError, match="base_model=DIR"):
            load_pretrained_learner(adapter)
        loaded = load_pretrained_learner(adapter, base_model=moved)
        texts = ["good movie", "bad plot"]
        assert loaded.hf_predict(texts) == learn.hf_predict(texts)
    finally:
        shutil.copytree(moved, root / "base")


def test_a_base_model_of_another_size_or_an_adapter_as_base_is_refused(adapter_on_own_base, tmp_path):
    _, adapter, _ = adapter_on_own_base
    other = tmp_path / "wider"
    config = tiny_bert_config()
    config.hidden_size = 48
    BertForSequenceClassification(config).save_pretrained(other)
    with pytest.raises(ValueError, match="hidden_size 48"):
        load_pretrained_learner(adapter, base_model=other)
    with pytest.raises(ValueError, match="is an adapter itself"):
        load_pretrained_learner(adapter, base_model=adapter)


def test_an_adapter_of_another_task_type_is_refused(adapter_on_own_base, tmp_path):
    _, adapter, _ = adapter_on_own_base
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "task_type": "TOKEN_CLS"}))
    settings = json.loads((copy / "blurlite.json").read_text())  # checksums that match: only the type is wrong
    settings["files"]["adapter_config.json"] = hashlib.sha256((copy / "adapter_config.json").read_bytes()).hexdigest()
    (copy / "blurlite.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="'TOKEN_CLS' adapter"):
        load_pretrained_learner(copy)


def test_modules_the_checkpoint_lacks_are_trained_and_saved(tiny_mlm_dir, tmp_path):
    "A classifier on an MLM checkpoint: its pooler is new (random); frozen and unsaved, a reload would differ."
    learn = hf_learner(adapter_dls(get_task("token-classification"), tiny_mlm_dir),
                       peft_config=LoraConfig(r=4, target_modules=["query"]))
    # no pooler in a token classifier: the MLM checkpoint lacks only the classifier
    assert set(learn.model.hf_model.peft_config["default"].modules_to_save) == {"classifier", "score"}
    from blurlite.adapters import new_modules
    from transformers import AutoModelForSequenceClassification
    assert new_modules(AutoModelForSequenceClassification.from_pretrained(tiny_mlm_dir)) == ["bert.pooler.dense",
                                                                                            "classifier"]
    learn = hf_learner(adapter_dls(get_task("text-classification"), tiny_mlm_dir), peft_config=LoraConfig(r=4))
    assert "bert.pooler" in learn.model.hf_model.peft_config["default"].modules_to_save
    assert "bert.pooler.dense" not in learn.model.hf_model.peft_config["default"].modules_to_save  # inside it
    pooler = [p for n, p in learn.model.named_parameters() if "pooler.modules_to_save" in n]
    assert pooler and all(p.requires_grad for p in pooler)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    texts = ["good movie", "bad plot"]
    assert load_pretrained_learner(learn.save_pretrained(tmp_path / "a")).hf_predict(texts) == learn.hf_predict(texts)


def test_an_mlm_adapter_on_a_checkpoint_without_mlm_head_is_refused(tiny_bert_dir):
    "Its head would stay random and, tied to the embeddings, could not be saved apart: a clear error, not a bad model."
    with pytest.raises(ValueError, match="no weights for cls.predictions.*tied"):
        hf_learner(adapter_dls(get_task("fill-mask"), tiny_bert_dir), peft_config=LoraConfig(r=4))


def test_default_lora_config_uses_peft_targets_and_alpha_two_r(tiny_bert_dir):
    config = default_lora_config(get_hf_objects(tiny_bert_dir).hf_model, r=4)
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8, {"query", "value"})
    with pytest.raises(ValueError, match="at least 1"):
        default_lora_config(get_hf_objects(tiny_bert_dir).hf_model, r=0)


def test_merged_model_answers_like_the_adapter_model(tiny_bert_dir):
    learn = hf_learner(adapter_dls(get_task("text-classification"), tiny_bert_dir), peft_config=LoraConfig(r=4))
    with torch.no_grad():  # make the adapters count: LoRA's B starts at zero
        for n, p in learn.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    merged = merged_model(learn.model.hf_model).eval()
    assert not has_adapters(merged) and has_adapters(learn)
    batch = {k: v for k, v in learn.dls.one_batch()[0].items()}
    learn.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, learn.model(batch).logits.as_subclass(torch.Tensor),
                                   atol=1e-5, rtol=1e-4)


# the command line
def test_train_lora_r_writes_an_adapter_and_predict_reads_both_kinds(tiny_bert_dir, reviews_csv, tmp_path, capsys):
    out = tmp_path / "lora"
    code = cli.main(["train", "--data", str(reviews_csv), "--model", str(tiny_bert_dir), "--valid-col", "is_valid",
                     "--epochs", "1", "--bs", "8", "--lr", "1e-2", "--max-length", "24", "--lora-r", "4",
                     "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "LoRA r=4:" in printed.out and "parameters train" in printed.out
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, ["query", "value"])
    texts = ["good movie", "the plot was bad"]
    learn = load_pretrained_learner(out)
    merged = learn.save_pretrained(tmp_path / "merged", merge_adapters=True)
    answers = []
    for artifact in (out, merged):
        assert cli.main(["predict", str(artifact), *texts]) == 0
        answers.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [a["label"] for a in answers[0]] == [a["label"] for a in answers[1]]
    assert [a["score"] for a in answers[0]] == pytest.approx([a["score"] for a in answers[1]], abs=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--lora-r", "0"], "--lora-r must be at least 1"),
    (["--lora-alpha", "8"], "--lora-alpha needs --lora-r"),
    (["--lora-r", "4", "--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
])
def test_bad_lora_arguments_are_one_line_errors(argv, message, reviews_csv, tiny_bert_dir, capsys):
    code = cli.main(["train", "--data", str(reviews_csv), "--model", str(tiny_bert_dir), *argv])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


def test_predict_base_model_must_be_a_directory(adapter_on_own_base, capsys):
    _, adapter, _ = adapter_on_own_base
    assert cli.main(["predict", str(adapter), "good", "--base-model", "/no/such/dir"]) != 0
    assert "--base-model: no directory" in capsys.readouterr().err


def test_lora_trains_on_two_processes(reviews_csv, tiny_bert_dir, tmp_path):
    "`distrib_ctx` with adapters: DDP over the trainable parameters only (the frozen base is not reduced)."
    import subprocess

    env = child_process_env()
    out = tmp_path / "ddp-lora"
    done = subprocess.run([sys.executable, "-m", "blurlite", "train", "--data", str(reviews_csv), "--model",
                           str(tiny_bert_dir), "--valid-col", "is_valid", "--epochs", "1", "--bs", "8", "--lr", "1e-2",
                           "--max-length", "32", "--lora-r", "4", "--num-processes", "2", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LoRA r=4:" in done.stdout and "validation: valid_loss" in done.stdout
    loaded = load_pretrained_learner(out)
    assert has_adapters(loaded) and loaded.hf_predict(["good movie"])[0]["label"] in ("positive", "negative")
