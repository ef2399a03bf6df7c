"""Extractive question answering: windows, labels, the span search against transformers' pipeline (4.57.6's code,
transcribed below on transformers 5's own `select_starts_ends` and the tokenizer's encodings), SQuAD metrics,
every fastai habit, saving, adapters, the command line and bad inputs. Tiny models, offline."""
import json
import random
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from arch_zoo import ARCHS, save_checkpoint
from conftest import NEGATIVE, NEUTRAL, POSITIVE, child_process_env, save_tiny_bert
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.interpret import Interpretation
from fastai.learner import load_learner
from fastai.torch_core import set_seed
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertForQuestionAnswering
from transformers.pipelines.document_question_answering import select_starts_ends

import blurlite.cli as cli
import blurlite.tasks.question_answering as qa_module
from blurlite.all import (HFQADataLoaders, find_hf_transform, get_hf_objects, hf_learner, load_pretrained_learner,
                          normalize_answer, squad_answer_scores, squad_to_df, task_for)
from blurlite.tasks.question_answering import TensorQAPositions, TensorQATargets

WINDOW = dict(max_length=32, stride=8)  # tiny windows: most contexts need several


def qa_rows(n=96, seed=0, n_words=(8, 50), answer_at=None):
    """Questions "what was good" / "what was bad" on neutral text holding one positive and one negative word (and
    plurals, two tokens a word); the answer is the word of the asked sentiment."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        words = [rng.choice(NEUTRAL) + rng.choice(["", "", "s"]) for _ in range(rng.randint(*n_words))]
        good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        at = [rng.randrange(len(words) + 1) if answer_at is None else answer_at(len(words)), rng.randrange(len(words))]
        words.insert(min(at[0], len(words)), good)
        words.insert(at[1], bad)
        context = " ".join(words)
        target = good if i % 2 == 0 else bad
        position = words.index(target)
        start = len(" ".join(words[:position])) + (1 if position else 0)
        rows.append({"question": "what was " + ("good" if target == good else "bad"), "context": context,
                     "answers": {"text": [target], "answer_start": [start]}, "is_valid": i % 4 == 0})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-qa"), model_cls=BertForQuestionAnswering)


@pytest.fixture(scope="module")
def trained(qa_dir):
    "A tiny BERT trained a little on `qa_rows` with windows of 32 tokens (contexts up to about 60)."
    dls = HFQADataLoaders.from_df(qa_rows(), qa_dir, valid_col="is_valid", bs=8, **WINDOW)
    set_seed(0)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        learn.untrained_scores = learn.validate()
        learn.fit_one_cycle(4, 5e-3)
    return learn


@pytest.fixture
def displayed(monkeypatch):
    frames = []
    monkeypatch.setattr(qa_module, "display_df", frames.append)
    return frames


# ---------------------------------------------------------------------------------------- the pipeline, transcribed
def pipeline_answers(model, tokenizer, question, context, top_k=1, max_answer_len=15, handle_impossible_answer=False,
                     max_seq_len=None, doc_stride=None, align_to_words=True):
    """transformers 4.57.6's `QuestionAnsweringPipeline` for a fast tokenizer, one question, transcribed (preprocess,
    `_forward`, `postprocess`, `get_indices`, `get_answer`): what `learn.answer` must equal."""
    max_seq_len = min(tokenizer.model_max_length, 384) if max_seq_len is None else max_seq_len
    doc_stride = min(max_seq_len // 2, 128) if doc_stride is None else doc_stride
    question_first = tokenizer.padding_side == "right"
    enc = tokenizer(text=question if question_first else context, text_pair=context if question_first else question,
                    padding="do_not_pad", truncation="only_second" if question_first else "only_first",
                    max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
                    return_overflowing_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    min_null_score, answers = 1000000, []
    for i in range(len(enc["input_ids"])):
        p_mask = [tok != 1 if question_first else 0 for tok in enc.sequence_ids(i)]
        if tokenizer.cls_token_id is not None:
            for c in np.nonzero(np.array(enc["input_ids"][i]) == tokenizer.cls_token_id)[0]:
                p_mask[c] = 0
        inputs = {k: torch.tensor([enc[k][i]], device=model.device) for k in tokenizer.model_input_names}
        with torch.no_grad():
            out = model(**inputs)
        starts, ends, scores, min_null_score = select_starts_ends(
            out.start_logits.float().cpu(), out.end_logits.float().cpu(), p_mask, np.array([enc["attention_mask"][i]]),
            min_null_score, top_k * 2 + 10 if align_to_words else top_k, handle_impossible_answer, max_answer_len)
        encoding = enc[i]
        for s, e, score in zip(starts, ends, scores):
            try:
                if not align_to_words:
                    raise ValueError
                a = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1 if question_first else 0)[0]
                b = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1 if question_first else 0)[1]
            except Exception:  # noqa: BLE001  as the pipeline: no words, offsets
                a, b = encoding.offsets[s][0], encoding.offsets[e][1]
            same = next((x for x in answers if x["answer"].lower() == context[a:b].lower()), None)
            if same:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": a, "end": b, "answer": context[a:b]})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
    return answers[0] if len(answers) == 1 else answers


def assert_same_answers(ours, theirs):
    ours, theirs = (ours if isinstance(ours, list) else [ours]), (theirs if isinstance(theirs, list) else [theirs])
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == [(a["answer"], a["start"], a["end"]) for a in theirs]
    assert np.allclose([a["score"] for a in ours], [a["score"] for a in theirs], atol=1e-4)


# --------------------------------------------------------------------------------------------------------- data
def test_windows_are_the_fast_tokenizers_overflow_of_question_and_context(trained):
    dls, df = trained.dls, qa_rows()
    tokenizer = find_hf_transform(dls).hf_tokenizer
    expected = tokenizer(list(df.question), list(df.context), truncation="only_second", max_length=32, stride=8,
                         return_overflowing_tokens=True)
    by_question = {}
    for w, d in enumerate(expected["overflow_to_sample_mapping"]):
        by_question.setdefault(d, []).append(expected["input_ids"][w])
    tfm = find_hf_transform(dls)
    for d in range(len(df)):
        doc = tfm.encodes((df.question[d], df.context[d]))
        assert [w.tolist() for w in doc["input_ids"]] == by_question[d]
    assert max(len(w) for w in by_question.values()) >= 3  # contexts of several windows


def test_training_windows_are_labelled_with_their_answer_or_the_first_token(trained):
    dl = trained.dls.train
    labelled = missed = 0
    for s in range(dl.n):
        x, y = dl.do_item(s)
        assert isinstance(y, TensorQAPositions)
        doc = dl.dataset[int(dl.window_doc[s])]
        answer_start = int(doc[1][0])
        answer_end = int(doc[1][1])
        context = qa_module._text(x["context_chars"])
        in_context = x["sequence_ids"] == 1
        holds = int(x["offset_start"][in_context].min()) <= answer_start and \
            int(x["offset_end"][in_context].max()) >= answer_end
        if holds:
            s_tok, e_tok = y.tolist()
            assert context[int(x["offset_start"][s_tok]):int(x["offset_end"][e_tok])] == context[answer_start:answer_end]
            labelled += 1
        else:
            assert y.tolist() == [0, 0]
            missed += 1
    assert labelled and missed


def test_questions_are_split_whole_and_validation_is_per_question(trained):
    df, dls = qa_rows(), trained.dls
    assert len(dls.valid_ds) == int(df.is_valid.sum()) and len(dls.train_ds) == int((~df.is_valid).sum())
    valid_questions = {(q, c) for q, c, v in zip(df.question, df.context, df.is_valid) if v}
    train_windows = {(x.question, x.context) for x in (dls.train_ds.decode(dls.train_ds[i])[0]
                                                       for i in range(len(dls.train_ds)))}
    assert not train_windows & {(q, c) for q, c in valid_questions}
    assert dls.train.n > len(dls.train_ds)  # training items are windows
    preds, targets = trained.get_preds()
    assert preds.shape == (len(dls.valid_ds), 4) and len(targets) == len(dls.valid_ds)


def test_an_answer_cut_off_from_a_window_labels_only_the_window_that_holds_it(qa_dir):
    df = qa_rows(8, answer_at=lambda n: n, n_words=(40, 50))  # the good word last: past the first window
    df = df[df.question == "what was good"].reset_index(drop=True)
    dls = HFQADataLoaders.from_df(df, qa_dir, valid_pct=0, bs=2, **WINDOW)
    x, y = dls.train_ds[0]
    labels = qa_module.QAWindowLabels()((x, y))[1]
    n = int(labels[0])
    windows = labels[1:1 + 2 * n].view(n, 2).tolist()
    assert n >= 2 and windows[0] == [0, 0] and windows[-1] != [0, 0]


def test_unanswerable_questions_are_labelled_with_the_first_token_and_may_be_answered_empty(qa_dir, tmp_path):
    df = qa_rows(24)
    df.loc[df.index % 3 == 0, "answers"] = [{"text": [], "answer_start": []}] * len(df.index[df.index % 3 == 0])
    dls = HFQADataLoaders.from_df(df, qa_dir, valid_col="is_valid", bs=4, **WINDOW)
    tfm = find_hf_transform(dls)
    assert tfm.handle_impossible_answer  # SQuAD v2 data: "" competes
    for i in range(len(dls.train_ds)):
        x, y = qa_module.QAWindowLabels()(dls.train_ds[i])
        if not len(dls.train_ds[i][1]):
            assert set(y[1:1 + 2 * int(y[0])].tolist()) == {0}
    learn = hf_learner(dls)
    answers = learn.answer(df.question[0], df.context[0], top_k=10_000, handle_impossible_answer=True)
    assert {"score": answers[-1]["score"], "start": 0, "end": 0, "answer": ""} in answers  # the null answer competes
    assert find_hf_transform(load_pretrained_learner(learn.save_pretrained(tmp_path / "v2")).dls
                             ).handle_impossible_answer  # kept for validation and `blurlite predict`


def test_squad_to_df_reads_v1_and_v2():
    squad = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "a", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "b", "question": "Who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    df = squad_to_df(squad)
    assert list(df.columns) == ["id", "title", "question", "context", "answers"]
    assert df.answers[0] == {"text": ["France"], "answer_start": [12]}
    assert df.answers[1] == {"text": [], "answer_start": []}


# ----------------------------------------------------------------------------------------------------- metrics
def test_squad_normalisation_and_scores_by_hand():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and the plum") == "apple pear and plum"
    assert squad_answer_scores("the Eiffel Tower", ["Eiffel Tower", "Paris"]) == (1.0, 1.0)
    em, f1 = squad_answer_scores("tower in Paris", ["Eiffel Tower"])  # 1 shared of 3 predicted, 2 gold
    assert em == 0.0 and f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert squad_answer_scores("", []) == (1.0, 1.0)  # no answer, rightly
    assert squad_answer_scores("Paris", []) == (0.0, 0.0)
    assert squad_answer_scores("", ["Paris"]) == (0.0, 0.0)


def test_validation_metrics_and_loss_equal_a_computation_from_answer_and_the_models_loss(trained):
    valid_loss, em, f1 = trained.validate()
    df = qa_rows()
    df = df[df.is_valid].reset_index(drop=True)
    answers = trained.answer(list(df.question), list(df.context))
    scores = [squad_answer_scores(a["answer"], r["text"]) for a, r in zip(answers, df.answers)]
    assert em == pytest.approx(np.mean([s[0] for s in scores]))
    assert f1 == pytest.approx(np.mean([s[1] for s in scores]))
    # the loss: per question, the mean of its windows' own model losses (windows padded as in its batch)
    dl, model, losses = trained.dls.valid, trained.model.hf_model, []
    model.eval()
    for b in dl:
        x, y = b
        positions = qa_module._question_positions(y.as_subclass(torch.Tensor), x["doc_ids"].long())
        inputs = {k: x[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        for d in range(int(x["doc_ids"].max()) + 1):
            rows = (x["doc_ids"] == d).nonzero().flatten()
            with torch.no_grad():
                out = [model(**{k: v[r:r + 1] for k, v in inputs.items()}, start_positions=positions[r:r + 1, 0],
                             end_positions=positions[r:r + 1, 1]).loss for r in rows.tolist()]
            losses.append(float(torch.stack(out).mean()))
    assert valid_loss == pytest.approx(np.mean(losses), rel=1e-4)
    assert valid_loss < trained.untrained_scores[0] and f1 > trained.untrained_scores[2]  # it learned


# ---------------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("kwargs", [{}, {"top_k": 3}, {"handle_impossible_answer": True, "top_k": 2},
                                    {"max_answer_len": 1}, {"align_to_words": False, "top_k": 2},
                                    {"max_seq_len": 24, "doc_stride": 4}])
def test_answer_equals_the_pipeline_on_the_saved_artifact(trained, tmp_path_factory, kwargs):
    path = tmp_path_factory.mktemp("qa-artifact")
    trained.save_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    df = qa_rows(12, seed=5)
    ours = trained.answer(list(df.question), list(df.context), **kwargs)
    settings = {"max_seq_len": 32, "doc_stride": 8, **kwargs}
    for q, c, answer in zip(df.question, df.context, ours):
        assert_same_answers(answer, pipeline_answers(model, tokenizer, q, c, **settings))


@pytest.mark.parametrize("arch", ["roberta", "llama"])
def test_answer_equals_the_pipeline_for_byte_bpe_and_context_first_tokenizers(arch, tmp_path):
    "Byte-level BPE (word alignment differs from WordPiece) and Llama (pads left: the context comes first)."
    path = save_checkpoint(ARCHS[arch], tmp_path / arch)
    hf_objects = get_hf_objects(path, model_cls=AutoModelForQuestionAnswering)
    if hf_objects.hf_tokenizer.pad_token is None:
        hf_objects.hf_tokenizer.pad_token = hf_objects.hf_tokenizer.eos_token
    df = qa_rows(16)
    dls = HFQADataLoaders.from_df(df, hf_objects, valid_col="is_valid", bs=4, max_length=40, stride=8)
    x, y = dls.train.one_batch()  # batches pad on the right: labels index the padded rows (Llama's pad left)
    assert (x["attention_mask"][:, 0] == 1).all()
    for row in range(len(y)):
        s, e = y[row].tolist()
        if (s, e) != (0, 0):
            context = qa_module._text(x["context_chars"][row])
            assert context[int(x["offset_start"][row, s]):int(x["offset_end"][row, e])].strip() in POSITIVE + NEGATIVE
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
    learn.model.eval()
    ours = learn.answer(list(df.question[:6]), list(df.context[:6]), top_k=2)
    tokenizer = hf_objects.hf_tokenizer
    for q, c, answer in zip(df.question[:6], df.context[:6], ours):
        assert_same_answers(answer, pipeline_answers(learn.model.hf_model, tokenizer, q, c, top_k=2, max_seq_len=40,
                                                     doc_stride=8))


def test_batches_of_questions_answer_as_one_at_a_time(trained):
    df = qa_rows(10, seed=3)
    batched = trained.answer(list(df.question), list(df.context), bs=3)
    for a, b in zip(batched, [trained.answer(q, c) for q, c in zip(df.question, df.context)], strict=True):
        assert_same_answers(a, b)  # padding in a batch moves scores by float rounding only
    one_context = trained.answer(["what was good", "what was bad"], df.context[0])
    assert one_context == [trained.answer("what was good", df.context[0]), trained.answer("what was bad", df.context[0])]


def test_predict_gives_the_answer_text_first(trained):
    df = qa_rows(4, seed=9)
    text, prediction, raw = trained.predict((df.question[0], df.context[0]))
    expected = trained.answer(df.question[0], df.context[0])
    assert text == expected["answer"] and (text.start, text.end) == (expected["start"], expected["end"])
    assert float(raw[1]) == pytest.approx(expected["score"], abs=1e-5)


def test_show_batch_show_results_and_top_losses_show_questions_contexts_and_answers(trained, displayed):
    trained.dls.show_batch(max_n=3)
    trained.show_results(max_n=2)
    Interpretation.from_learner(trained).plot_top_losses(3)
    batch, results, top = displayed
    assert list(batch.columns) == ["question", "context", "answer"] and len(batch) == 3
    assert list(results.columns) == ["question", "context", "answer", "predicted"] and len(results) == 2
    assert list(top.columns) == ["question", "context", "answer", "predicted", "score", "loss"] and len(top) == 3
    assert top.loss.is_monotonic_decreasing
    assert all(a in c for a, c in zip(batch.answer, batch.context) if a != "(no answer)")
    assert all(a in c for a, c in zip(results.answer, results.context))
    sample = trained.dls.valid.decode_batch(trained.dls.valid.one_batch())[0]
    assert [(a, a.start, a.end) for a in sample[1].answers] == [(sample[0].context[a.start:a.end], a.start, a.end)
                                                                for a in sample[1].answers]


def test_use_hf_loss_trains_on_the_models_own_loss_which_equals_fastais(trained):
    b = trained.dls.train.one_batch()
    x, y = b
    model = trained.model.hf_model
    model.eval()
    with torch.no_grad():
        out = model(**{k: x[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                    **qa_module.positions_as_labels((y,)))
    ours = trained.loss_func(qa_module.start_end_logits(out), y)
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-5)
    dls = HFQADataLoaders.from_df(qa_rows(24), find_hf_transform(trained.dls).hf_tokenizer.name_or_path,
                                  valid_col="is_valid", bs=4, **WINDOW)
    learn = hf_learner(dls, use_hf_loss=True)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.values[-1]).all()


def test_a_model_without_a_span_head_is_refused(qa_dir):
    from transformers import AutoModelForSequenceClassification

    dls = HFQADataLoaders.from_df(qa_rows(8), qa_dir, valid_col="is_valid", bs=2, **WINDOW)
    with pytest.raises(ValueError, match="AutoModelForQuestionAnswering"):
        hf_learner(dls, AutoModelForSequenceClassification.from_pretrained(qa_dir))


# ------------------------------------------------------------------------------------------------------ saving
def test_save_pretrained_keeps_windows_and_answer_settings(qa_dir, tmp_path):
    dls = HFQADataLoaders.from_df(qa_rows(16), qa_dir, valid_col="is_valid", bs=4, max_length=28, stride=6,
                                  max_answer_len=3, handle_impossible_answer=True)
    learn = hf_learner(dls)
    learn.save_pretrained(tmp_path / "model")
    loaded = load_pretrained_learner(tmp_path / "model")
    tfm = find_hf_transform(loaded.dls)
    assert (tfm.max_length, tfm.stride, tfm.max_answer_len, tfm.handle_impossible_answer) == (28, 6, 3, True)
    df = qa_rows(5, seed=2)
    trained_answers = learn.answer(list(df.question), list(df.context), top_k=2)
    for a, b in zip(loaded.answer(list(df.question), list(df.context), top_k=2), trained_answers, strict=True):
        assert_same_answers(a, b)
    learn.export(tmp_path / "export.pkl")
    exported = load_learner(tmp_path / "export.pkl")
    assert task_for(exported.dls).name == "question-answering"
    for a, b in zip(exported.answer(list(df.question), list(df.context), top_k=2), trained_answers, strict=True):
        assert_same_answers(a, b)  # load_learner puts it on the CPU: the learner may be on a GPU


def test_lora_adapters_train_save_and_load(qa_dir, tmp_path):
    from peft import LoraConfig

    dls = HFQADataLoaders.from_df(qa_rows(24), qa_dir, valid_col="is_valid", bs=4, **WINDOW)
    learn = hf_learner(dls, peft_config=LoraConfig(r=4, target_modules=["query", "value"]))
    assert learn.model.hf_model.peft_config["default"].task_type == "QUESTION_ANS"
    head = learn.model.hf_model.base_model.model.qa_outputs
    before = {n: p.detach().clone() for n, p in learn.model.hf_model.named_parameters()}
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-2)
    changed = {n for n, p in learn.model.hf_model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n or "qa_outputs" in n for n in changed)
    assert any("qa_outputs" in n for n in changed) and isinstance(head, torch.nn.Module)
    df = qa_rows(4, seed=7)
    expected = learn.answer(list(df.question), list(df.context))
    learn.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    for a, b in zip(load_pretrained_learner(tmp_path / "adapter").answer(list(df.question), list(df.context)),
                    expected, strict=True):
        assert_same_answers(a, b)
    learn.save_pretrained(tmp_path / "merged", merge_adapters=True)
    merged = load_pretrained_learner(tmp_path / "merged").answer(list(df.question), list(df.context))
    for a, b in zip(merged, expected):
        assert_same_answers(a, b)


# ------------------------------------------------------------------------------------------------- command line
def to_squad(df) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": str(i), "question": q,
                                "answers": [{"text": t, "answer_start": s} for t, s in zip(a["text"], a["answer_start"])]}]}
        for i, (q, c, a) in enumerate(zip(df.question, df.context, df.answers))]}]}


def test_the_command_line_trains_on_squad_json_and_answers_questions(qa_dir, tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(to_squad(qa_rows(32))))
    out = tmp_path / "model"
    code = cli.main(["train", "--task", "qa", "--data", str(data), "--model", str(qa_dir), "--epochs", "1",
                     "--bs", "8", "--max-length", "32", "--stride", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "squad_exact_match" in capsys.readouterr().out
    learn = load_pretrained_learner(out)
    assert find_hf_transform(learn.dls).stride == 8
    df = qa_rows(3, seed=4)
    assert cli.main(["predict", str(out), "--question", df.question[0], "--context", df.context[0]]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(learn.answer(df.question[0], df.context[0])))
    lines = tmp_path / "questions.jsonl"
    lines.write_text("\n".join(json.dumps({"question": q, "context": c}) for q, c in zip(df.question, df.context)))
    assert cli.main(["predict", str(out), "--file", str(lines)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == json.loads(json.dumps(learn.answer(list(df.question), list(df.context))))


def test_the_command_line_reads_answers_as_json_in_a_csv_cell(qa_dir, tmp_path, capsys):
    df = qa_rows(24)
    df["answers"] = [json.dumps(a) for a in df.answers]
    df.to_csv(tmp_path / "train.csv", index=False)
    code = cli.main(["train", "--task", "question-answering", "--data", str(tmp_path / "train.csv"), "--model",
                     str(qa_dir), "--valid-col", "is_valid", "--epochs", "1", "--max-length", "32",
                     "--out", str(tmp_path / "m")])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["what"], "--question Q --context C"),
    (["--question", " ", "--context", "x"], "--question 1: the question must be a non-empty text"),
    (["--question", "a", "--question", "b", "--context", "x", "--context", "y", "--context", "z"],
     "2 --question but 3 --context"),
    (["--question", "what"], "1 --question but 0 --context"),
])
def test_bad_predict_arguments_are_one_line_errors(trained, tmp_path, capsys, argv, message):
    trained.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "m"), *argv]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_question_options_are_refused_for_other_tasks(tiny_bert_dir, reviews_csv, tmp_path, capsys):
    assert cli.main(["train", "--data", str(reviews_csv), "--model", str(tiny_bert_dir), "--epochs", "1",
                     "--max-length", "16", "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "m"), "--question", "what", "--context", "good"]) != 0
    assert "--question is not an option of a text-classification model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- bad input
def _with(column, row, value):
    df = qa_rows(8)
    df[column] = df[column].astype(object)
    df.at[row, column] = value
    return df


@pytest.mark.parametrize("df, message", [
    (lambda: _with("answers", 2, {"text": ["great"], "answer_start": [0]}), "row 2, column 'answers': answer_start 0"),
    (lambda: _with("question", 3, "  "), "row 3, column 'question': the text is empty"),
    (lambda: _with("context", 1, float("nan")), "row 1 in column 'context': the text is missing"),
    (lambda: _with("answers", 4, "not json"), "row 4, column 'answers': answers must be SQuAD's"),
    (lambda: _with("answers", 5, {"text": ["a", "b"], "answer_start": [0]}), "row 5, column 'answers': 2 answer texts"),
    (lambda: _with("answers", 6, {"text": [""], "answer_start": [0]}), "row 6, column 'answers': an answer text must"),
    (lambda: _with("question", 7, " ".join(["movie"] * 40)), "row 7: the question leaves no room"),
    (lambda: qa_rows(8).iloc[:0], "the DataFrame is empty"),
])
def test_bad_input_gets_a_clear_error_naming_the_row(qa_dir, df, message):
    with pytest.raises((ValueError, TypeError, KeyError), match=message.replace("(", r"\(")):
        HFQADataLoaders.from_df(df(), qa_dir, bs=2, **WINDOW)


def test_bad_window_and_answer_settings_fail_clearly(qa_dir):
    with pytest.raises(ValueError, match="stride must be an int from 0 to 28"):
        HFQADataLoaders.from_df(qa_rows(8), qa_dir, bs=2, max_length=32, stride=40)
    with pytest.raises(ValueError, match="max_answer_len must be an int of at least 1"):
        HFQADataLoaders.from_df(qa_rows(8), qa_dir, bs=2, max_answer_len=0, **WINDOW)


def test_answer_refuses_mismatched_inputs_and_other_learners(trained, tiny_bert_dir):
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        trained.answer(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="question 0: the context must be a non-empty str"):
        trained.answer("what", "")
    from blurlite.all import HFTextDataLoaders
    from conftest import make_reviews

    other = hf_learner(HFTextDataLoaders.from_df(make_reviews(16), tiny_bert_dir, bs=4))
    with pytest.raises(TypeError, match="answer is for question-answering learners"):
        other.answer("what", "good")


def test_errors_name_the_callers_row_labels(qa_dir):
    df = _with("question", 7, " ".join(["movie"] * 40))
    df.index = df.index + 500  # e.g. a slice of a bigger frame
    with pytest.raises(ValueError, match="row 507: the question leaves no room"):
        HFQADataLoaders.from_df(df, qa_dir, bs=2, **WINDOW)


def test_a_single_question_in_a_list_answers_as_one(trained):
    assert trained.answer(["what was good"], ["a good film"]) == trained.answer("what was good", "a good film")


def test_the_command_line_names_the_bad_row_of_a_file(qa_dir, tmp_path, capsys):
    df = _with("answers", 2, {"text": ["great"], "answer_start": [0]})
    df.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    assert cli.main(["train", "--task", "qa", "--data", str(tmp_path / "bad.jsonl"), "--model", str(qa_dir)]) != 0
    err = capsys.readouterr().err
    assert "row 2, column 'answers': answer_start 0" in err and len(err.strip().splitlines()) == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ------------------------------------------------------------------------------------------- several processes
DISTRIBUTED_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.torch_core import set_seed
from test_question_answering import WINDOW, qa_rows
from blurlite.all import HFQADataLoaders, hf_learner

set_seed(0)
dls = HFQADataLoaders.from_df(qa_rows(64), sys.argv[2], valid_col="is_valid", bs=4, **WINDOW)
learn = hf_learner(dls)
with learn.distrib_ctx():
    learn.fit_one_cycle(1, 1e-3)
    scores = learn.validate()
    preds, targets = learn.get_preds()
learn.save_pretrained(sys.argv[3])
json.dump({"scores": [float(v) for v in scores], "preds": preds.tolist(), "targets": targets.tolist()},
          open(os.path.join(sys.argv[4], f"rank{os.environ['RANK']}.json"), "w"))
"""


def test_two_processes_train_and_validate_every_question_once_exactly(qa_dir, tmp_path):
    "distrib_ctx on 2 CPU processes: every rank ends with the one-process validation of the trained model."
    import subprocess
    from pathlib import Path

    if not torch.distributed.is_available():
        pytest.fail("this torch has no torch.distributed")
    script = tmp_path / "train_qa.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = child_process_env()
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(Path(__file__).parent), str(qa_dir), str(out), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    learn = load_pretrained_learner(out)  # the trained model, validated in one process on the same questions
    one = hf_learner(HFQADataLoaders.from_df(qa_rows(64), qa_dir, valid_col="is_valid", bs=4, **WINDOW),
                     learn.model.hf_model)
    with one.no_bar(), one.no_logging():
        scores = one.validate()
        preds, targets = one.get_preds()
    assert ranks[0]["scores"] == pytest.approx([float(v) for v in scores], abs=1e-5)
    assert len(ranks[0]["preds"]) == len(preds) == 16
    assert np.allclose(ranks[0]["preds"], preds.numpy(), atol=1e-4) and ranks[0]["targets"] == targets.tolist()
