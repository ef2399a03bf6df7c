"""Sequence to sequence: batches (inputs and -100-padded targets), the decoder's inputs as the model shifts them, loss,
ROUGE/BLEU/perplexity against a hand computation, generation against transformers 4.57.6's text2text pipeline's way
(`model.generate` on `config.prefix + text`, decoded skipping special tokens), encoder-decoders warm-started from
BERTs, splitter, command line, several processes, bad input. The contract tests (test_task_contract,
test_serialization, test_adapters) cover show_batch/show_results, export, save_pretrained and LoRA for this task too."""
import json
import math
import sys

import pytest
import torch
from conftest import child_process_env, make_reviews, save_tiny_bert, save_tiny_seq2seq, seq2seq_frame
from fastai.callback.core import Callback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.torch_core import set_seed
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BertModel

import blurlite.cli as cli
from blurlite.all import (GenerationMetric, find_hf_transform, pipeline_generation_config,
                          squad_to_question_generation_df, HFSeq2SeqDataLoaders, Seq2SeqLossFlat, get_hf_objects,
                          hf_encoder_decoder, hf_learner, hf_splitter, load_pretrained_learner, seq2seq_perplexity)

TEXTS = ["the movie was good", "a bad film and a boring plot with a very poor actor", "great"]


def frame(n=64):
    return seq2seq_frame(make_reviews(n))


@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory):
    return save_tiny_seq2seq(tmp_path_factory.mktemp("tiny-bart"), "bart")


@pytest.fixture(scope="module")
def bert_encoder_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-encoder"), model_cls=BertModel)


@pytest.fixture(params=["t5", "bart", "bert2bert"])
def objects(request, tiny_t5_dir, tiny_bart_dir, bert_encoder_dir):
    "Fresh hf objects of each kind of encoder-decoder: T5, BART, and one warm-started from two tiny BERTs."
    if request.param == "bert2bert":
        return hf_encoder_decoder(bert_encoder_dir)
    return get_hf_objects({"t5": tiny_t5_dir, "bart": tiny_bart_dir}[request.param], model_cls=AutoModelForSeq2SeqLM)


def dls_for(objects_or_dir, n=64, **kwargs):
    return HFSeq2SeqDataLoaders.from_df(frame(n), objects_or_dir, valid_col="is_valid", bs=8, max_length=24, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_t5_dir):
    "The tiny T5 trained to copy the sentiment words of a review."
    set_seed(0)
    learn = hf_learner(dls_for(tiny_t5_dir, n=160))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(6, 1e-2)
    return learn


def plain_generate(path, texts, **settings) -> list[str]:
    "transformers 4.57.6's text2text pipeline, one text at a time: `model.generate` on `config.prefix + text`."
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))
    prefix = model.config.prefix or ""
    out = []
    for text in texts:
        enc = tok(prefix + text, return_tensors="pt")
        enc.pop("token_type_ids", None)
        with torch.no_grad():
            ids = model.generate(**enc, **settings)
        out.append(tok.decode(ids[0], skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return out


# data
def test_batches_pad_inputs_with_pad_and_targets_with_minus_100_each_to_their_longest(tiny_t5_dir):
    dls = dls_for(tiny_t5_dir, prefix="the ")
    tok = AutoTokenizer.from_pretrained(str(tiny_t5_dir))
    target_of = dict(zip(frame().text, frame().target))
    for x, y in [dls.train.one_batch(), dls.valid.one_batch()]:
        assert set(x) == {"input_ids", "attention_mask"}
        assert y.shape[1] == int((y != -100).sum(1).max())  # targets: their own longest, not the inputs'
        for ids, mask, target in zip(x["input_ids"], x["attention_mask"], y):
            ids = ids[mask.bool()].tolist()
            text = tok.decode(ids, skip_special_tokens=True)[len("the "):]
            assert ids == tok("the " + text)["input_ids"]
            n = int((target != -100).sum())
            assert (target[n:] == -100).all()
            assert target[:n].tolist() == tok(text_target=target_of[text])["input_ids"]


class Record(Callback):
    "What the model saw and the loss fastai computed, batch by batch."
    order = 50

    def __init__(self):
        self.seen = []

    def after_loss(self):
        self.seen.append(({k: v.clone() for k, v in self.xb[0].items()}, self.yb[0].clone(), float(self.learn.loss)))


def test_decoder_inputs_are_the_models_own_shift_and_the_loss_is_the_models(objects):
    learn = hf_learner(dls_for(objects))
    rec = Record()
    learn.validate(cbs=[rec])
    model = learn.model.hf_model.eval()
    assert rec.seen
    for x, y, loss in rec.seen:
        labels = y.as_subclass(torch.Tensor)
        assert torch.equal(x["decoder_input_ids"], model.prepare_decoder_input_ids_from_labels(labels=labels))
        with torch.no_grad():  # the model makes its decoder inputs from the labels itself
            own = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=labels).loss
        assert loss == pytest.approx(float(own), rel=1e-5)


def test_use_hf_loss_trains_on_the_models_own_loss(tiny_t5_dir):
    set_seed(0)
    learn = hf_learner(dls_for(tiny_t5_dir), use_hf_loss=True)
    before = float(learn.validate()[0])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(2, 1e-2)
    assert float(learn.validate()[0]) < before


# metrics
def test_validation_metrics_equal_a_hand_computation_with_the_same_libraries(trained):
    from rouge_score import rouge_scorer
    import sacrebleu

    names = [m.name for m in trained.metrics]
    assert names == ["perplexity", "rouge1", "rouge2", "rougeL", "bleu"]
    with trained.no_bar():
        scores = dict(zip(["loss", *names], trained.validate()))
    valid = frame(160)[lambda d: d.is_valid]
    generated = [g["generated_text"] for g in trained.generate(valid.text.tolist(), num_beams=1, max_new_tokens=128)]
    tok = find_hf_transform(trained.dls).hf_tokenizer
    targets = tok.batch_decode(tok(text_target=valid.target.tolist())["input_ids"], skip_special_tokens=True)
    for kind in ("rouge1", "rouge2", "rougeL"):
        scorer = rouge_scorer.RougeScorer([kind])
        hand = sum(scorer.score(t, p)[kind].fmeasure for p, t in zip(generated, targets)) / len(targets)
        assert scores[kind] == pytest.approx(hand, abs=1e-6)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(generated, [targets]).score, abs=1e-6)
    assert scores["rouge1"] > 0.3  # it learnt the task (untrained: 0): the sentiment words come back
    model = trained.model.hf_model
    total, count = 0.0, 0
    for text, target in zip(valid.text, valid.target):  # exp of the mean loss over every target token
        enc = tok(text, return_tensors="pt", return_token_type_ids=False).to(model.device)  # CPU or CUDA
        labels = torch.tensor([tok(text_target=target)["input_ids"]], device=model.device)
        with torch.no_grad():
            loss = model(**enc, labels=labels).loss
        total, count = total + float(loss) * labels.numel(), count + labels.numel()
    assert scores["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_generation_metrics_take_their_own_settings_and_a_sample(trained):
    sample = GenerationMetric("rougeL", num_beams=2, max_new_tokens=2, max_samples=5)
    default = trained.metrics
    trained.metrics = [sample, seq2seq_perplexity]
    try:
        with trained.no_bar(), trained.no_logging():
            trained.validate()
    finally:
        trained.metrics = default
    assert len(sample.preds) == len(sample.targs) == 5
    tok = find_hf_transform(trained.dls).hf_tokenizer
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 2 for p in sample.preds)
    with pytest.raises(ValueError, match="score must be one of"):
        GenerationMetric("meteor")
    with pytest.raises(ValueError, match="max_samples"):
        GenerationMetric("bleu", max_samples=0)
    with pytest.raises(ValueError, match="num_return_sequences must be 1"):
        GenerationMetric("bleu", num_return_sequences=2)
    import pickle

    assert sample.preds and pickle.loads(pickle.dumps(sample)).preds == []  # an export carries no texts


def test_generation_metrics_never_reuse_texts_generated_with_earlier_weights(tiny_t5_dir):
    from blurlite.tasks.seq2seq import _decode, _generate_ids

    learn = hf_learner(dls_for(tiny_t5_dir))
    metric = GenerationMetric("rougeL", max_new_tokens=6)
    learn.metrics = [metric]
    b = learn.dls.valid.one_batch()  # the same tensors twice: a cache keyed on them would answer from the first run
    with learn.no_bar(), learn.no_logging():
        learn.validate(dl=[b])
        first = list(metric.preds)
        with torch.no_grad():
            for p in learn.model.hf_model.parameters():
                p.mul_(3.0)
        learn.validate(dl=[b])
    tok, model = find_hf_transform(learn.dls).hf_tokenizer, learn.model.hf_model.eval()
    fresh = _decode(tok, _generate_ids(model, b[0], tok, num_beams=1, max_new_tokens=6, do_sample=False))
    assert metric.preds == fresh != first


def test_show_results_shows_text_target_and_the_generated_text(trained, monkeypatch):
    import blurlite.tasks.seq2seq as s2s

    frames = []
    monkeypatch.setattr(s2s, "display_df", frames.append)
    trained.show_results(max_n=5, shuffle=False)
    (shown,) = frames
    assert list(shown.columns) == ["text", "target", "generated"] and len(shown) == 5
    valid = frame(160)[lambda d: d.is_valid].set_index("text")
    assert [valid.target[t].replace(" .", ".") for t in shown.text] == list(shown.target)  # decoded targets
    greedy = trained.generate(list(shown.text), num_beams=1, max_new_tokens=128)
    assert list(shown.generated) == [g["generated_text"] for g in greedy]


# generation
@pytest.mark.parametrize("settings", [dict(max_new_tokens=6, num_beams=1, do_sample=False),
                                      dict(max_new_tokens=6, num_beams=3, do_sample=False)], ids=["greedy", "beam"])
def test_generate_equals_the_text2text_pipeline_way_on_the_artifact(objects, settings, tmp_path):
    set_seed(0)
    learn = hf_learner(dls_for(objects))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-2)
    path = learn.save_pretrained(tmp_path / "artifact")
    expected = plain_generate(path, TEXTS, **settings)
    assert [g["generated_text"] for g in learn.generate(TEXTS, **settings)] == expected
    assert [g["generated_text"] for g in load_pretrained_learner(path).generate(TEXTS, **settings)] == expected
    assert learn.generate(TEXTS[0], **settings) == [{"generated_text": expected[0]}]


def test_defaults_are_the_pipelines_and_batches_answer_as_one_text_at_a_time(trained, tmp_path):
    path = trained.save_pretrained(tmp_path / "artifact")
    texts = frame(40).text.tolist()[:12]
    batched = trained.generate(texts, bs=5)
    assert batched == [trained.generate(t)[0] for t in texts]
    # 4.57.6's pipeline defaults when the model's generation config sets none: 256 new tokens, 4 beams
    assert [g["generated_text"] for g in batched] == plain_generate(path, texts, max_new_tokens=256, num_beams=4)
    assert trained.predict(texts[0])[0] == batched[0]["generated_text"]
    assert trained.generate([]) == []
    config = pipeline_generation_config(trained.model.hf_model)
    config.update(max_new_tokens=3, num_beams=1)  # a caller's generation config replaces the pipeline's
    assert trained.generate(texts[:3], generation_config=config) == trained.generate(texts[:3], max_new_tokens=3,
                                                                                     num_beams=1)
    several = trained.generate(texts[:2], num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert [len(s) for s in several] == [2, 2] and all(set(g) == {"generated_text"} for s in several for g in s)


def test_the_prefix_goes_into_the_config_and_before_every_text(tiny_t5_dir, tmp_path):
    learn = hf_learner(dls_for(tiny_t5_dir, prefix="a film : "))
    path = learn.save_pretrained(tmp_path / "artifact")
    assert json.loads((path / "config.json").read_text())["prefix"] == "a film : "
    settings = dict(max_new_tokens=5, num_beams=1)
    assert [g["generated_text"] for g in learn.generate(TEXTS, **settings)] == plain_generate(path, TEXTS, **settings)
    loaded = load_pretrained_learner(path)
    assert find_hf_transform(loaded.dls).prefix == "a film : "
    assert loaded.generate(TEXTS, **settings) == learn.generate(TEXTS, **settings)


# models
def test_an_encoder_decoder_warm_started_from_berts_trains_saves_and_loads(bert_encoder_dir, tmp_path):
    hf_objects = hf_encoder_decoder(bert_encoder_dir)
    tok, model = hf_objects.hf_tokenizer, hf_objects.hf_model
    for config in (model.config, model.generation_config):
        assert (config.decoder_start_token_id, config.pad_token_id, config.eos_token_id) == \
            (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id)
    encoder = BertModel.from_pretrained(str(bert_encoder_dir))
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    set_seed(0)
    learn = hf_learner(dls_for(hf_objects))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-2)
    path = learn.save_pretrained(tmp_path / "artifact")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(str(path))
    assert type(loaded).__name__ == "EncoderDecoderModel"
    assert plain_generate(path, TEXTS, max_new_tokens=5, num_beams=2) == \
        [g["generated_text"] for g in learn.generate(TEXTS, max_new_tokens=5, num_beams=2)]
    with pytest.raises(OSError, match="local encoder checkpoints"):
        hf_encoder_decoder(tmp_path / "nowhere")


def test_hf_splitter_groups_embeddings_encoder_blocks_decoder_blocks_and_head(objects):
    model = objects.hf_model
    learn = hf_learner(dls_for(objects))
    groups = hf_splitter(learn.model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # every parameter once
    n_enc = len(model.get_encoder().block if hasattr(model.get_encoder(), "block") else
                getattr(model.get_encoder(), "layers", None) or model.get_encoder().encoder.layer)
    assert len(groups) == 2 + n_enc + 2  # embeddings, 2 encoder blocks, 2 decoder blocks, head
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("decoder" not in names[id(p)] or "encoder" in names[id(p)].split("decoder")[0]
               for p in groups[1]) and all("decoder" in names[id(p)] for p in groups[-2])
    learn.freeze()  # the head trains; the weights of the other groups are frozen (fastai keeps norms and biases)
    assert all(p.requires_grad for p in groups[-1])
    assert not any(p.requires_grad for g in groups[:-1] for p in g if p.ndim > 1)


# the command line and several processes
def test_the_command_line_takes_a_target_column_and_generation_settings(tiny_t5_dir, tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    frame().rename(columns={"text": "source", "target": "summary"}).to_csv(data, index=False)
    out = tmp_path / "model"
    code = cli.main(["train", "--task", "summarization", "--data", str(data), "--model", str(tiny_t5_dir),
                     "--text-col", "source", "--target-col", "summary", "--valid-col", "is_valid", "--epochs", "1",
                     "--bs", "8", "--max-length", "24", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(["predict", str(out), *TEXTS[:2], "--max-new-tokens", "4", "--num-beams", "2"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [[g] for g in load_pretrained_learner(out).generate(TEXTS[:2], max_new_tokens=4, num_beams=2)]
    assert cli.main(["predict", str(out), "x", "--num-beams", "0"]) != 0
    assert "--num-beams must be a positive int" in capsys.readouterr().err


DISTRIBUTED_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from conftest import make_reviews, seq2seq_frame
from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.torch_core import set_seed
from blurlite.all import HFSeq2SeqDataLoaders, hf_learner

set_seed(0)
dls = HFSeq2SeqDataLoaders.from_df(seq2seq_frame(make_reviews(96)), sys.argv[2], valid_col="is_valid", bs=4,
                                   max_length=24)
learn = hf_learner(dls)
with learn.distrib_ctx():
    learn.fit_one_cycle(2, 1e-2)
    scores = learn.validate()
learn.save_pretrained(sys.argv[3])
json.dump([float(v) for v in scores], open(os.path.join(sys.argv[4], f"rank{os.environ['RANK']}.json"), "w"))
"""


def test_two_processes_score_every_validation_text_once(tiny_t5_dir, tmp_path):
    "distrib_ctx on 2 CPU processes: every rank's loss, perplexity, ROUGE and BLEU are the one-process ones."
    import subprocess
    from pathlib import Path

    script = tmp_path / "train_s2s.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(Path(__file__).parent), str(tiny_t5_dir), str(out), str(tmp_path)],
                          env=child_process_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    learn = load_pretrained_learner(out)
    one = hf_learner(HFSeq2SeqDataLoaders.from_df(seq2seq_frame(make_reviews(96)), tiny_t5_dir, valid_col="is_valid",
                                                  bs=4, max_length=24), learn.model.hf_model)
    with one.no_bar(), one.no_logging():
        scores = one.validate()
    assert ranks[0] == pytest.approx([float(v) for v in scores], abs=1e-5)


# bad input
def test_bad_input_gets_clear_errors(tiny_t5_dir, tiny_bert_dir):
    df = frame()
    for value, what in ((None, "missing"), (float("nan"), "missing"), ("  ", "empty"), (3, "not a str but an int")):
        bad = df.copy()
        bad["target"] = bad["target"].astype(object)
        bad.loc[7, "target"] = value
        with pytest.raises(ValueError, match=f"row 7: the target is {what}"):
            HFSeq2SeqDataLoaders.from_df(bad, tiny_t5_dir, valid_col="is_valid", bs=8)
    with pytest.raises(KeyError, match="summary"):
        HFSeq2SeqDataLoaders.from_df(df, tiny_t5_dir, target_col="summary")
    bad = df.copy()
    bad.loc[3, "text"] = None
    with pytest.raises(ValueError, match="row 3 in column 'text': the text is missing"):
        HFSeq2SeqDataLoaders.from_df(bad, tiny_t5_dir)
    with pytest.raises(TypeError, match="prefix must be a str"):
        HFSeq2SeqDataLoaders.from_df(df, tiny_t5_dir, prefix=None)
    encoder_only = get_hf_objects(tiny_bert_dir)
    with pytest.raises(ValueError, match="not an encoder-decoder"):
        hf_learner(HFSeq2SeqDataLoaders.from_df(df, encoder_only, valid_col="is_valid", bs=8))
    learn = hf_learner(dls_for(tiny_t5_dir))
    with pytest.raises(TypeError, match="text 1: expected a str"):
        learn.generate(["fine", 3])
    assert isinstance(learn.loss_func, Seq2SeqLossFlat)


def test_squad_becomes_question_generation_pairs_with_the_answers_sentence():
    context = "Denver won the game. The coach was Gary Kubiak! Was it close? It was 24 to 10."
    squad = {"data": [{"title": "SB", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "Who coached?", "answers": [{"text": "Gary Kubiak", "answer_start": 35}]},
        {"id": "b", "question": "What was the score?", "answers": [{"text": "24 to 10", "answer_start": 69}]},
        {"id": "c", "question": "Who lost?", "answers": [], "is_impossible": True}]}]}]}
    df = squad_to_question_generation_df(squad)
    assert df.text.tolist() == ["answer: Gary Kubiak context: The coach was Gary Kubiak!",
                                "answer: 24 to 10 context: It was 24 to 10."]
    assert df.target.tolist() == ["Who coached?", "What was the score?"] and (df.context == context).all()
