import pickle
import random
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import NEUTRAL, VOCAB, make_reviews, tiny_dls
from fastai.text.all import CategoryBlock, ColReader, ColSplitter, DataBlock
from transformers import BertTokenizer, RobertaConfig, RobertaForSequenceClassification

from blurlite.data import HFTextBlock, HFTextInput, HFTextPair, HFTokenize, find_hf_transform, model_max_length


def varied_lengths(n=160, seed=1):
    "Reviews of 1 to 40 words, so that bucketing has something to do."
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(NEUTRAL) for _ in range(rng.randint(1, 40))) for _ in range(n)]
    return pd.DataFrame({"text": texts, "label": [["positive", "negative"][i % 2] for i in range(n)],
                         "is_valid": [i % 4 == 0 for i in range(n)]})


def test_batches_are_dicts_of_long_tensors(tiny_objects, reviews):
    x, y = tiny_dls(reviews, tiny_objects).one_batch()
    assert set(x) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(v.dtype == torch.long and v.ndim == 2 for v in x.values())
    assert len({v.shape for v in x.values()}) == 1 and len(y) == x["input_ids"].shape[0]


def test_items_are_tokenized_once_not_every_epoch(tiny_objects, reviews):
    tokenizer_cls = type(tiny_objects.hf_tokenizer)
    with mock.patch.object(tokenizer_cls, "__call__", autospec=True,
                           side_effect=tokenizer_cls.__call__) as tokenizer_call:
        dls = tiny_dls(reviews, tiny_objects)
        calls_at_creation = tokenizer_call.call_count
        for _ in range(2):
            for dl in (dls.train, dls.valid):
                for _ in dl:
                    pass
    assert calls_at_creation == 1  # every text of both splits in one batched call
    assert tokenizer_call.call_count == calls_at_creation


def test_each_batch_is_padded_to_its_longest_item(tiny_objects):
    dls = tiny_dls(varied_lengths(), tiny_objects, bs=8)
    widths = set()
    for dl in (dls.train, dls.valid):
        for x, _ in dl:
            mask = x["attention_mask"]
            assert mask[:, -1].any(), "a column of padding only: the batch was padded past its longest item"
            assert (x["input_ids"][mask == 0] == 0).all()
            widths.add(mask.shape[1])
    assert len(widths) > 3  # batch widths follow the data, not one fixed length


def _padding_fraction(lengths, bs):
    batches = [lengths[i:i + bs] for i in range(0, len(lengths), bs)]
    return sum(len(b) * max(b) - sum(b) for b in batches) / sum(len(b) * max(b) for b in batches)


def test_batches_are_bucketed_by_length(tiny_objects):
    dls = tiny_dls(varied_lengths(), tiny_objects, bs=8)
    valid_lengths = [int(n) for x, _ in dls.valid for n in x["attention_mask"].sum(1)]
    assert valid_lengths == sorted(valid_lengths, reverse=True)
    train_lengths = [int(n) for x, _ in dls.train for n in x["attention_mask"].sum(1)]
    shuffled = random.Random(0).sample(train_lengths, len(train_lengths))
    assert _padding_fraction(train_lengths, 8) < 0.5 * _padding_fraction(shuffled, 8)


def test_truncates_to_the_smaller_of_max_length_and_model_max(tiny_objects):
    long_text = " ".join(["movie"] * 500)
    tfm = HFTokenize(tiny_objects.hf_tokenizer, max_length=model_max_length(*tiny_objects[1:3]))
    assert len(tfm(long_text)["input_ids"]) == 64  # max_position_embeddings of the tiny config
    for max_length, expected in ((16, 16), (1000, 64), (None, 64)):
        block = HFTextBlock(*tiny_objects, max_length=max_length)
        assert block.max_length == expected


def test_roberta_style_position_offset_lowers_the_model_max():
    config = RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    model = RobertaForSequenceClassification(config)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    assert model_max_length(config, tokenizer, model) == 38


def test_long_texts_are_truncated_in_batches_not_a_crash(tiny_objects, reviews):
    reviews.loc[3, "text"] = " ".join(["film"] * 1000)
    dls = tiny_dls(reviews, tiny_objects, max_length=20)
    widths = [x["input_ids"].shape[1] for dl in (dls.train, dls.valid) for x, _ in dl]
    assert max(widths) == 20


def test_decodes_back_to_the_text(tiny_objects, reviews):
    dls = tiny_dls(reviews, tiny_objects)
    samples = dls.valid.decode_batch(dls.valid.one_batch(), max_n=4)
    originals = set(reviews.text)
    assert all(str(x) in originals for x, _ in samples)
    assert all(y in ("positive", "negative") for _, y in samples)


def test_text_pairs_get_segments_and_decode_as_pairs(tiny_objects):
    df = pd.DataFrame({"a": ["the movie", "a film was", "the plot"] * 4, "b": ["good", "bad plot", "nice"] * 4,
                       "label": ["x", "y", "x"] * 4, "is_valid": [False] * 9 + [True] * 3})
    dls = DataBlock(blocks=(HFTextBlock(*tiny_objects), CategoryBlock), get_x=ColReader(["a", "b"]),
                    get_y=ColReader("label"), splitter=ColSplitter("is_valid")).dataloaders(df, bs=3)
    x, _ = dls.train.one_batch()
    assert (x["token_type_ids"] == 1).any()
    pair, _ = dls.train.decode_batch((x, _), max_n=1)[0]
    assert isinstance(pair, HFTextPair)
    assert (pair.text, pair.text_pair) in set(zip(df.a, df.b))


def test_exported_transform_carries_no_training_text(tiny_objects, reviews):
    tfm = find_hf_transform(tiny_dls(reviews, tiny_objects))
    assert len(tfm._cache) > 0
    restored = pickle.loads(pickle.dumps(tfm))
    assert restored._cache == {}
    assert torch.equal(restored(reviews.text[0])["input_ids"], tfm(reviews.text[0])["input_ids"])


def test_item_input_is_a_dict_of_1d_tensors(tiny_objects):
    x = HFTokenize(tiny_objects.hf_tokenizer)("the good movie")
    assert isinstance(x, HFTextInput) and x["input_ids"].tolist() == [VOCAB.index(w) for w in
                                                                  ("[CLS]", "the", "good", "movie", "[SEP]")]


def test_padding_max_length_pads_every_batch_to_max_length(tiny_objects, reviews):
    dls = tiny_dls(reviews, tiny_objects, max_length=24, padding="max_length")
    assert {x["input_ids"].shape[1] for dl in (dls.train, dls.valid) for x, _ in dl} == {24}
    samples = dls.valid.decode_batch(dls.valid.one_batch(), max_n=2)
    assert all(str(x) in set(reviews.text) for x, _ in samples)


def test_left_padding_side_is_respected(tiny_objects, reviews):
    tiny_objects.hf_tokenizer.padding_side = "left"
    x, _ = tiny_dls(varied_lengths(), tiny_objects, bs=8).valid.one_batch()
    assert x["attention_mask"][:, -1].all() and not x["attention_mask"][:, 0].all()


def test_batch_lengths_round_up_to_a_multiple_capped_at_max_length(tiny_objects, reviews):
    "Few batch shapes (for GPUs): lengths round up to the multiple, never past max_length; outputs are unchanged."
    train = tiny_dls(reviews, tiny_objects, max_length=20).train
    plain, rounded = train.new(shuffle=False, pad_to_multiple_of=None), train.new(shuffle=False, pad_to_multiple_of=8)
    lengths, model = set(), tiny_objects.hf_model.eval().to(train.device or "cpu")
    for (x, _), (x8, _) in zip(plain, rounded):
        n = x["input_ids"].shape[1]
        lengths.add(x8["input_ids"].shape[1])
        assert x8["input_ids"].shape[1] == min(-(-n // 8) * 8, 20)
        assert (x8["attention_mask"][:, n:] == 0).all() and torch.equal(x8["input_ids"][:, :n], x["input_ids"])
        with torch.no_grad():
            assert torch.allclose(model(**x).logits, model(**x8).logits, atol=1e-5)
    assert lengths <= {8, 16, 20}


def test_auto_multiple_is_32_on_cuda_and_none_on_cpu():
    from blurlite.data import HFSortedDL

    assert HFSortedDL.resolve_multiple("auto", "cuda:0") == 32
    assert HFSortedDL.resolve_multiple("auto", torch.device("cpu")) is None
    assert HFSortedDL.resolve_multiple("auto", None) is None and HFSortedDL.resolve_multiple(8, "cpu") == 8
