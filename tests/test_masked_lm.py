"""Masked LM: masking statistics and invariants, the block, loss and metrics, display, fill_mask, export."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NEGATIVE, NEUTRAL, POSITIVE, SPECIALS, VOCAB, tiny_bert_config
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.data.block import DataBlock
from fastai.data.transforms import ColReader, ColSplitter
from fastai.torch_core import set_seed
from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizer, pipeline

from blurlite.all import (IGNORE_INDEX, AutoModelForMaskedLM, HFMLMBlock, HFMLMDataLoaders, MaskedLMLogitsCallback,
                          get_hf_objects, group_texts, hf_learner, mask_tokens)
import blurlite.tasks.masked_lm as masked_lm

MASK, VOCAB_SIZE = 4, 1000


def random_batch(generator, rows=64, length=128):
    ids = torch.randint(5, VOCAB_SIZE, (rows, length), generator=generator)
    lengths = torch.randint(8, length + 1, (rows,), generator=generator)
    maskable = torch.arange(length)[None] < lengths[:, None] - 1
    maskable[:, 0] = False  # [CLS]; the last real position plays [SEP], the rest padding
    return ids, maskable


def test_selected_fraction_and_80_10_10_split_over_many_batches():
    g = torch.Generator().manual_seed(0)
    selected = candidates = masked = randomised = kept = 0
    for _ in range(50):
        ids, maskable = random_batch(g)
        out, labels = mask_tokens(ids, maskable, MASK, VOCAB_SIZE, generator=g)
        chosen = labels != IGNORE_INDEX
        selected, candidates = selected + int(chosen.sum()), candidates + int(maskable.sum())
        masked += int((out[chosen] == MASK).sum())
        same = out[chosen] == ids[chosen]
        kept += int(same.sum())
        randomised += int((~same & (out[chosen] != MASK)).sum())
    assert abs(selected / candidates - 0.15) < 0.01
    # a random replacement can draw the original token (1 in 1000): within the tolerance
    assert abs(masked / selected - 0.8) < 0.02 and abs(randomised / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02


def test_mlm_probability_is_configurable():
    g = torch.Generator().manual_seed(1)
    ids, maskable = random_batch(g, rows=256)
    _, labels = mask_tokens(ids, maskable, MASK, VOCAB_SIZE, mlm_probability=0.4, generator=g)
    assert abs(int((labels != IGNORE_INDEX).sum()) / int(maskable.sum()) - 0.4) < 0.01


def test_new_masks_each_call():
    g = torch.Generator().manual_seed(2)
    ids, maskable = random_batch(g)
    assert not torch.equal(mask_tokens(ids, maskable, MASK, VOCAB_SIZE, generator=g)[1],
                           mask_tokens(ids, maskable, MASK, VOCAB_SIZE, generator=g)[1])


@settings(max_examples=100, deadline=None)
@given(word_lengths=st.lists(st.integers(1, 4), min_size=1, max_size=30), n_pad=st.integers(0, 10),
       seed=st.integers(0, 2**31), whole_word=st.booleans())
def test_special_tokens_and_padding_are_never_selected_and_words_never_split(word_lengths, n_pad, seed,
                                                                             whole_word):
    word_ids = [-1] + [w for w, n in enumerate(word_lengths) for _ in range(n)] + [-1] + [-1] * n_pad
    word_ids = torch.tensor([word_ids] * 8)
    maskable = word_ids >= 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB_SIZE, word_ids.shape, generator=g)
    out, labels = mask_tokens(ids, maskable, MASK, VOCAB_SIZE, mlm_probability=0.5,
                              word_ids=word_ids if whole_word else None, generator=g)
    chosen = labels != IGNORE_INDEX
    assert not chosen[~maskable].any() and torch.equal(out[~maskable], ids[~maskable])
    assert torch.equal(labels[chosen], ids[chosen])
    if whole_word:
        for row in range(8):
            for w in range(len(word_lengths)):
                picks = chosen[row][word_ids[row] == w]
                assert picks.all() or not picks.any()


# the block, on a tiny BERT with a masked-LM head
WORDS = POSITIVE + NEGATIVE + NEUTRAL + ["goods", "badly", "nicely"]  # the last three split into sub-tokens


def make_texts(n=200, seed=0, max_words=30):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, max_words))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(path)
    return path


def mlm_dls(texts, path, bs=16, **kwargs):
    df = pd.DataFrame({"text": texts, "is_valid": [i % 5 == 0 for i in range(len(texts))]})
    return HFMLMDataLoaders.from_df(df, path, valid_col="is_valid", bs=bs, **kwargs)


def test_batches_are_inputs_and_labels_with_ignore_index_off_the_selected_positions(tiny_mlm_dir):
    dls = mlm_dls(make_texts(), tiny_mlm_dir)
    assert dls.n_inp == 1
    x, y = dls.one_batch()
    assert y.shape == x["input_ids"].shape and y.dtype == torch.long
    selected = y != IGNORE_INDEX
    assert selected.any() and (x["attention_mask"][selected] == 1).all()
    assert not x["special_tokens_mask"][selected].bool().any()
    assert ((x["input_ids"] == 4) <= selected).all()  # every [MASK] is a selected position


def test_labels_hold_the_original_ids_and_masks_are_new_every_epoch(tiny_mlm_dir):
    dls = mlm_dls(make_texts(80), tiny_mlm_dir, bs=32)
    dl = dls.train.new(shuffle=False)
    (x1, y1), (x2, y2) = dl.one_batch(), dl.one_batch()
    original = torch.where(y1 != IGNORE_INDEX, y1, x1["input_ids"])
    assert torch.equal(original, torch.where(y2 != IGNORE_INDEX, y2, x2["input_ids"]))
    assert not torch.equal(y1, y2)  # new masks each pass over the data


def test_validation_masks_are_the_same_every_epoch(tiny_mlm_dir):
    dls = mlm_dls(make_texts(), tiny_mlm_dir)
    first, second = list(dls.valid), list(dls.valid)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0]["input_ids"], b[0]["input_ids"])
               for a, b in zip(first, second))


@pytest.mark.parametrize("whole_word", [False, True])
def test_validation_masks_depend_on_the_item_only(tiny_mlm_dir, whole_word):
    "Not on its batch, batch size or padding side: distributed and one-process validation mask alike."
    texts = make_texts(40)
    outputs = {}
    for bs, side in ((32, "right"), (5, "right"), (7, "left")):
        dls = mlm_dls(texts, tiny_mlm_dir, bs=bs, whole_word=whole_word)
        dl = dls.valid.new(padding_side=side)
        rows = {}
        for x, y in dl:
            for ids, labels, mask in zip(x["input_ids"], y, x["attention_mask"]):
                keep = mask.bool()
                rows[tuple(torch.where(labels[keep] != IGNORE_INDEX, labels[keep], ids[keep]).tolist())] = (
                    ids[keep].tolist(), labels[keep].tolist())
        outputs[(bs, side)] = rows
    reference = outputs[(32, "right")]
    assert sum(l != IGNORE_INDEX for _, labels in reference.values() for l in labels) > 0
    assert all(rows == reference for rows in outputs.values())


def test_selected_fraction_and_split_through_the_data_loader(tiny_mlm_dir):
    dls = mlm_dls(make_texts(400, max_words=60), tiny_mlm_dir, bs=32)
    set_seed(3)
    selected = candidates = masked = kept = 0
    for _ in range(8):
        for x, y in dls.train:
            maskable = x["attention_mask"].bool() & ~x["special_tokens_mask"].bool()
            chosen = y != IGNORE_INDEX
            assert not chosen[~maskable].any()
            selected, candidates = selected + int(chosen.sum()), candidates + int(maskable.sum())
            masked += int((x["input_ids"][chosen] == 4).sum())
            kept += int((x["input_ids"][chosen] == y[chosen]).sum())
    assert abs(selected / candidates - 0.15) < 0.01
    # 10% random draws land on the original token 1 time in 35 (tiny vocab): kept ~ 0.1 + 0.1/35
    assert abs(masked / selected - 0.8) < 0.02 and abs(kept / selected - 0.1 - 0.1 / len(VOCAB)) < 0.02


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join), min_size=4,
                      max_size=12), whole_word=st.booleans(), seed=st.integers(0, 2**16))
def test_block_never_masks_special_tokens_or_padding_nor_splits_words(tiny_mlm_dir, texts, whole_word, seed):
    hf_objects = get_hf_objects(tiny_mlm_dir, model_cls=AutoModelForMaskedLM)
    df = pd.DataFrame({"text": texts, "is_valid": [False] * (len(texts) - 2) + [True] * 2})
    dls = DataBlock(blocks=HFMLMBlock(*hf_objects, mlm_probability=0.5, whole_word=whole_word),
                    get_x=ColReader("text"), splitter=ColSplitter("is_valid")).dataloaders(df, bs=2)
    set_seed(seed)
    for x, y in list(dls.train) + list(dls.valid):
        chosen = y != IGNORE_INDEX
        assert not chosen[x["attention_mask"] == 0].any() and not chosen[x["special_tokens_mask"].bool()].any()
        if whole_word:
            for row in range(len(y)):
                for w in x["word_ids"][row].unique().tolist():
                    picks = chosen[row][x["word_ids"][row] == w]
                    assert w < 0 or picks.all() or not picks.any()


def test_group_texts_cuts_a_corpus_into_chunks_that_fit_and_lose_nothing(tiny_mlm_dir):
    tokenizer = BertTokenizer.from_pretrained(tiny_mlm_dir)
    lines = make_texts(300, max_words=8) + [""] * 5
    chunks = group_texts(lines, tokenizer, 32)
    lengths = [len(tokenizer(c)["input_ids"]) for c in chunks]
    assert max(lengths) <= 32 and np.mean(lengths[:-1]) > 28  # full chunks, the tail kept
    assert "".join("".join(chunks).split()) == "".join("".join(lines).split())
    dls = HFMLMDataLoaders.from_texts(lines, tiny_mlm_dir, max_length=32, group=True, valid_pct=0.2, seed=0, bs=8)
    grouped = list(dls.train_ds.items.text) + list(dls.valid_ds.items.text)  # each split grouped on its own
    assert sorted("".join(grouped).replace(" ", "").replace("\n", "")) == sorted("".join(lines).replace(" ", ""))
    assert len(dls.valid_ds) >= 1 and len(grouped) <= len(chunks) + 1


@pytest.fixture(scope="module")
def trained(tiny_mlm_dir):
    set_seed(0)
    learn = hf_learner(mlm_dls(make_texts(), tiny_mlm_dir))
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()
        learn.fit_one_cycle(3, 3e-3)
    learn.before = before
    return learn


def test_training_lowers_loss_and_perplexity(trained):
    with trained.no_bar():
        loss, perplexity, accuracy = trained.validate()
    assert loss < trained.before[0] and perplexity < trained.before[1] * 0.8
    assert 0 <= accuracy <= 1


def test_perplexity_and_accuracy_are_over_the_selected_positions_and_need_no_full_logits(trained):
    with trained.no_bar():
        fast = trained.validate()
        trained.remove_cb(MaskedLMLogitsCallback)
        try:
            slow = trained.validate()
        finally:
            trained.add_cb(MaskedLMLogitsCallback())
    nll, correct, count = 0.0, 0, 0
    model = trained.model.eval()
    with torch.no_grad():
        for x, y in trained.dls.valid:
            logits = model(x).logits
            keep = y != IGNORE_INDEX
            nll += float(torch.nn.functional.cross_entropy(logits[keep], y[keep].as_subclass(torch.Tensor),
                                                           reduction="sum"))
            correct, count = correct + int((logits[keep].argmax(-1) == y[keep]).sum()), count + int(keep.sum())
    assert fast[1] == pytest.approx(np.exp(nll / count), rel=1e-4) and fast[2] == pytest.approx(correct / count)
    assert list(fast[1:]) == pytest.approx(list(slow[1:]), rel=1e-4)
    # selected positions only, fastai weighs each batch's loss by its number of predicted tokens: the validation
    # loss is the mean over tokens, the log of the perplexity (full logits weigh batches by their number of texts)
    assert fast[0] == pytest.approx(np.log(fast[1]), rel=1e-4)


def test_show_batch_and_show_results_show_the_masked_text_and_hidden_tokens(trained, monkeypatch):
    frames = []
    monkeypatch.setattr(masked_lm, "display_df", frames.append)
    trained.dls.show_batch(max_n=4)
    trained.show_results(max_n=4)
    batch, results = frames
    assert list(batch.columns) == ["masked text", "hidden tokens"] and len(batch) == 4
    assert batch["masked text"].str.contains(r"\[MASK\]").any()
    assert not batch["masked text"].str.contains(r"\[CLS\]|\[PAD\]").any()
    assert list(results.columns) == ["masked text", "hidden tokens", "predicted"]
    hidden = results["hidden tokens"].str.split().map(len)
    assert hidden.sum() > 0 and (hidden == results["predicted"].str.split().map(len)).all()
    assert set(" ".join(results["predicted"]).split()) <= set(VOCAB)


FILL_TEXTS = ["the movie was [MASK] .", "the [MASK] was [MASK] and very good", "a [MASK]"]


@pytest.mark.parametrize("top_k", [1, 5])
def test_fill_mask_equals_the_fill_mask_pipeline(trained, top_k):
    pipe = pipeline("fill-mask", model=trained.model.hf_model, tokenizer=masked_lm.find_hf_transform(
        trained.dls).hf_tokenizer)
    for text in FILL_TEXTS + [FILL_TEXTS]:
        got, expected = trained.fill_mask(text, top_k=top_k), pipe(text, top_k=top_k)
        assert strip_scores(got) == strip_scores(expected)
        assert scores(got) == pytest.approx(scores(expected), abs=1e-4)
    for bs in (1, 2):  # a list: run longest first in batches of bs, returned in input order
        got, expected = trained.fill_mask(FILL_TEXTS[::-1], top_k=top_k, bs=bs), pipe(FILL_TEXTS[::-1], top_k=top_k)
        assert strip_scores(got) == strip_scores(expected)
        assert scores(got) == pytest.approx(scores(expected), abs=1e-4)


def strip_scores(result):
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "score"}
    return [strip_scores(r) for r in result]


def scores(result):
    return [result["score"]] if isinstance(result, dict) else [s for r in result for s in scores(r)]


def test_fill_mask_needs_a_mask_token_and_a_masked_lm_learner(trained, tiny_bert_dir):
    with pytest.raises(ValueError, match=r"mask token '\[MASK\]'"):
        trained.fill_mask("the movie was good")
    from conftest import make_reviews

    from blurlite.all import HFTextDataLoaders

    learn = hf_learner(HFTextDataLoaders.from_df(make_reviews(20), tiny_bert_dir, valid_col="is_valid", bs=4))
    with pytest.raises(TypeError, match="fill_mask is for masked-LM learners"):
        learn.fill_mask("the [MASK]")


EXPORT_CHECK = textwrap.dedent("""
    import json, sys
    from fastai.text.all import load_learner
    learn = load_learner(sys.argv[1])
    print(json.dumps([learn.fill_mask(t, top_k=3) for t in json.loads(sys.argv[2])]))
""")


def test_export_then_load_learner_in_a_fresh_process(trained, tmp_path):
    fname = tmp_path / "mlm.pkl"
    trained.export(fname)
    out = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(fname), json.dumps(FILL_TEXTS)],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected = [trained.fill_mask(t, top_k=3) for t in FILL_TEXTS]
    assert strip_scores(got) == strip_scores(expected)
    assert scores(got) == pytest.approx(scores(expected), abs=1e-6)


# bad input
def test_bad_input_gets_clear_errors(tiny_mlm_dir, tiny_bert_dir):
    texts = make_texts(20)
    with pytest.raises(ValueError, match="row 3 in column 'text': the text is missing"):
        mlm_dls(texts[:3] + [None] + texts[4:], tiny_mlm_dir)
    with pytest.raises(ValueError, match="bs=64 is larger than the training set"):
        mlm_dls(texts, tiny_mlm_dir, bs=64)
    with pytest.raises(ValueError, match="mlm_probability must be between 0 and 1"):
        mlm_dls(texts, tiny_mlm_dir, mlm_probability=1.5)
    with pytest.raises(ValueError, match="the DataFrame is empty"):
        HFMLMDataLoaders.from_df(pd.DataFrame({"text": []}), tiny_mlm_dir)
    hf_objects = get_hf_objects(tiny_bert_dir)  # a classifier: no language-model head
    with pytest.raises(ValueError, match="model_cls=AutoModelForMaskedLM"):
        hf_learner(mlm_dls(texts, hf_objects))
    df = pd.DataFrame({"text": [["a movie", "a film"]] * 10})
    with pytest.raises(TypeError, match="masked LM takes one text per item"):
        DataBlock(blocks=HFMLMBlock(*hf_objects), get_x=ColReader("text")).dataloaders(df, bs=2)


def test_a_tokenizer_without_a_mask_token_is_refused(tmp_path):
    vocab = [w for w in VOCAB if w != "[MASK]"]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, mask_token=None).save_pretrained(tmp_path)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="the tokenizer has no mask token"):
        HFMLMBlock(*get_hf_objects(tmp_path, model_cls=AutoModelForMaskedLM))


def test_fill_mask_truncates_at_the_blocks_max_length_as_training_did(trained, tiny_mlm_dir):
    "A text longer than max_length: the model sees its first max_length tokens, as in training; a mask past them errs."
    short = hf_learner(mlm_dls(make_texts(), tiny_mlm_dir, max_length=8), trained.model.hf_model)
    tokenizer = masked_lm.find_hf_transform(short.dls).hf_tokenizer
    text = "the [MASK] was good and the film was very good and the actor was good"
    assert len(tokenizer(text)["input_ids"]) > 8
    pipe = pipeline("fill-mask", model=short.model.hf_model, tokenizer=tokenizer)
    got = short.fill_mask(text, top_k=3)
    expected = pipe(text, top_k=3, tokenizer_kwargs={"truncation": True, "max_length": 8})
    assert strip_scores(got) == strip_scores(expected) and scores(got) == pytest.approx(scores(expected), abs=1e-4)
    untruncated = pipe(text, top_k=3)
    assert scores(got) != pytest.approx(scores(untruncated), abs=1e-6)  # the truncation changes the answer
    with pytest.raises(ValueError, match=r"text 1: its mask token lies past max_length=8"):
        short.fill_mask(["a [MASK]", "the film was very good and the actor was good [MASK]"])
