"""Tiny models of many architectures, each with a tokenizer trained here in its family's style, offline.

Three tokenizer families, as the hub's checkpoints have them: WordPiece (BERT and friends), byte-level BPE
(RoBERTa, GPT-2, ModernBERT's generic fast tokenizer) and SentencePiece-style Unigram/BPE with a metaspace
(XLM-R, CamemBERT, ALBERT, DeBERTa-v2, BigBird, Llama). Models are built from configs (hidden 32, 2 layers).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PERSONS = ["Smith", "Maria", "Chen", "Okafor", "Lindqvist", "Dubois"]
PLACES = ["Paris", "Berlin", "Lagos", "Kyoto", "Lima", "Oslo"]
FILLER = ["flew", "to", "met", "in", "the", "a", "visited", "from", "with", "and", "yesterday", "today", "went",
          "near", "friends", "walked"]
POSITIVE = ["good", "great", "nice", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring"]
NEUTRAL = ["movie", "film", "the", "a", "was", "plot", "actor", "is", "and", "very", "scene", "music"]


def ner_rows(n: int, seed: int = 0) -> pd.DataFrame:
    "Sentences with person and place names tagged B-PER/B-LOC (capitalised: byte-level BPE splits them)."
    rng, rows = random.Random(seed), []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        for names in (PERSONS, PLACES):
            words.insert(rng.randrange(len(words) + 1), rng.choice(names))
        tags = ["B-PER" if w in PERSONS else "B-LOC" if w in PLACES else "O" for w in words]
        rows.append({"words": words, "tags": tags, "is_valid": i % 4 == 0})
    return pd.DataFrame(rows)


def review_rows(n: int, seed: int = 0) -> pd.DataFrame:
    "Reviews whose sentiment word decides the label."
    rng, rows = random.Random(seed), []
    for i in range(n):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 10))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if i % 2 else NEGATIVE))
        rows.append({"text": " ".join(words), "label": "positive" if i % 2 else "negative", "is_valid": i % 4 == 0})
    return pd.DataFrame(rows)


def corpus() -> list[str]:
    return [" ".join(w) for w in ner_rows(300, seed=1).words] + list(review_rows(300, seed=1).text)


def _model_of(tokenizer: Tokenizer) -> dict:
    return json.loads(tokenizer.to_str())["model"]


@lru_cache(maxsize=None)
def wordpiece_vocab(specials: tuple, lowercase: bool = True) -> dict:
    tok = Tokenizer(models.WordPiece(unk_token=specials[1]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=160, special_tokens=list(specials)))
    return _model_of(tok)["vocab"]


@lru_cache(maxsize=None)
def byte_bpe(specials: tuple) -> tuple[dict, list]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=330, special_tokens=list(specials),
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = _model_of(tok)
    return model["vocab"], [tuple(m) for m in model["merges"]]


@lru_cache(maxsize=None)
def unigram(specials: tuple) -> list:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(corpus(), trainers.UnigramTrainer(vocab_size=150, special_tokens=list(specials),
                                                              unk_token="<unk>" if "<unk>" in specials else "[UNK]"))
    return [tuple(v) for v in _model_of(tok)["vocab"]]


@lru_cache(maxsize=None)
def metaspace_bpe(specials: tuple) -> tuple[dict, list]:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=160, special_tokens=list(specials)))
    model = _model_of(tok)
    return model["vocab"], [tuple(m) for m in model["merges"]]


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def _bert_tokenizer():
    return tf.BertTokenizer(vocab=wordpiece_vocab(BERT_SPECIALS))


def _mpnet_tokenizer():
    return tf.MPNetTokenizer(vocab=wordpiece_vocab(("<s>", "[UNK]", "<pad>", "</s>", "<mask>")))


def _funnel_tokenizer():
    return tf.FunnelTokenizer(vocab=wordpiece_vocab(("<pad>", "<unk>", "<cls>", "<sep>", "<mask>", "<s>", "</s>")))


def _roberta_tokenizer(cls=tf.RobertaTokenizer):
    vocab, merges = byte_bpe(ROBERTA_SPECIALS)
    return cls(vocab=vocab, merges=merges)


def _gpt2_tokenizer():
    vocab, merges = byte_bpe(("<|endoftext|>",))
    tok = tf.GPT2Tokenizer(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token  # as users do for GPT-2 classification: no pad token of its own
    return tok


def _modernbert_tokenizer():
    "ModernBERT's checkpoints ship a generic `PreTrainedTokenizerFast` over a byte-level BPE, [CLS] x [SEP]."
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    vocab, merges = byte_bpe(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")


def _xlmr_tokenizer(cls=tf.XLMRobertaTokenizer):
    return cls(vocab=unigram(ROBERTA_SPECIALS))


def _albert_tokenizer():
    return tf.AlbertTokenizer(vocab=unigram(("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")))


def _deberta_tokenizer():
    return tf.DebertaV2Tokenizer(vocab=unigram(("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")), unk_id=3)


def _big_bird_tokenizer():
    return tf.BigBirdTokenizer(vocab=unigram(("<pad>", "<s>", "</s>", "<unk>", "[SEP]", "[MASK]", "[CLS]")))


def _llama_tokenizer():
    vocab, merges = metaspace_bpe(("<unk>", "<s>", "</s>"))
    tok = tf.LlamaTokenizer(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # as decoder checkpoints often ship: batches pad on the left
    return tok


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@dataclass(frozen=True)
class Arch:
    "One architecture of the suite: how to build its tokenizer and config, and which tasks its models support."
    name: str
    family: str  # "wordpiece", "byte-level BPE", "unigram", "metaspace BPE"
    tokenizer: callable
    config: callable  # (tokenizer) -> config
    tasks: tuple = ("text-classification", "token-classification", "fill-mask")
    quirks: str = ""
    base_model: str = ""  # the base model class, where `AutoModel` needs it named


def _ids(tok) -> dict:
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id)


ARCHS = {a.name: a for a in [
    Arch("bert", "wordpiece", _bert_tokenizer,
         lambda t: tf.BertConfig(**SMALL, **_ids(t), max_position_embeddings=128)),
    Arch("distilbert", "wordpiece", _bert_tokenizer,
         lambda t: tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128,
                                       **_ids(t))),
    Arch("electra", "wordpiece", _bert_tokenizer,
         lambda t: tf.ElectraConfig(embedding_size=16, **SMALL, **_ids(t), max_position_embeddings=128)),
    Arch("mpnet", "wordpiece", _mpnet_tokenizer,
         lambda t: tf.MPNetConfig(**SMALL, **_ids(t), max_position_embeddings=130)),
    Arch("funnel", "wordpiece", _funnel_tokenizer,
         lambda t: tf.FunnelConfig(vocab_size=len(t), block_sizes=[1, 1], num_decoder_layers=1, d_model=32, n_head=2,
                                   d_head=16, d_inner=64, pad_token_id=t.pad_token_id), base_model="FunnelModel",
         quirks="padded batches give (slightly) different logits than single texts: its pooling attends to "
                "padding (transformers' behaviour); `hf_predict` batches, so compare with `bs=1`"),
    Arch("roberta", "byte-level BPE", _roberta_tokenizer,
         lambda t: tf.RobertaConfig(**SMALL, **_ids(t), max_position_embeddings=130)),
    Arch("longformer", "byte-level BPE", _roberta_tokenizer,
         lambda t: tf.LongformerConfig(**SMALL, **_ids(t), max_position_embeddings=130, attention_window=[8, 8])),
    Arch("modernbert", "byte-level BPE", _modernbert_tokenizer,
         lambda t: tf.ModernBertConfig(**SMALL, **_ids(t), max_position_embeddings=128, cls_token_id=t.cls_token_id,
                                       sep_token_id=t.sep_token_id, bos_token_id=t.cls_token_id,
                                       eos_token_id=t.sep_token_id, local_attention=16)),
    Arch("xlm-roberta", "unigram", _xlmr_tokenizer,
         lambda t: tf.XLMRobertaConfig(**SMALL, **_ids(t), max_position_embeddings=130)),
    Arch("camembert", "unigram", lambda: _xlmr_tokenizer(tf.CamembertTokenizer),
         lambda t: tf.CamembertConfig(**SMALL, **_ids(t), max_position_embeddings=130)),
    Arch("albert", "unigram", _albert_tokenizer,
         lambda t: tf.AlbertConfig(embedding_size=16, **SMALL, **_ids(t), max_position_embeddings=128)),
    Arch("deberta-v2", "unigram", _deberta_tokenizer,
         lambda t: tf.DebertaV2Config(**SMALL, **_ids(t), max_position_embeddings=128, relative_attention=True,
                                      position_buckets=16, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                      position_biased_input=False)),
    Arch("big_bird", "unigram", _big_bird_tokenizer,
         lambda t: tf.BigBirdConfig(**SMALL, **_ids(t), max_position_embeddings=128),
         quirks="block-sparse attention needs long inputs: for sequences shorter than about "
                "(5 + 2 * num_random_blocks) * block_size tokens (704 by default) it runs full attention, and "
                "transformers warns"),
    Arch("gpt2", "byte-level BPE", _gpt2_tokenizer,
         lambda t: tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=len(t),
                                 pad_token_id=t.pad_token_id), tasks=("text-classification", "token-classification"),
         quirks="no pad token: set `tokenizer.pad_token = tokenizer.eos_token` (the head reads the last non-pad "
                "token; transformers finds it on either padding side)"),
    Arch("llama", "metaspace BPE", _llama_tokenizer,
         lambda t: tf.LlamaConfig(**SMALL, num_key_value_heads=1, vocab_size=len(t), pad_token_id=t.pad_token_id,
                                  max_position_embeddings=128), tasks=("text-classification", "token-classification"),
         quirks="no pad token: set `tokenizer.pad_token = tokenizer.eos_token`, as for GPT-2; pads on the left"),
]}


def save_checkpoint(arch: Arch, path) -> str:
    "Write a local checkpoint directory for `arch`: its tokenizer, config and (random) base-model weights."
    torch.manual_seed(0)
    tok = arch.tokenizer()
    config = arch.config(tok)
    if arch.base_model:  # funnel's AutoModel has two candidates
        config.architectures = [arch.base_model]
    tf.AutoModel.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def entity_type(tag) -> str:
    return "O" if tag in (None, "O") else str(tag).split("-", 1)[-1]


def word_types_from_entities(words, entities) -> list[str]:
    "Each word's entity type from pipeline-style entities: the entity that covers most of its characters."
    types, start = [], 0
    for w in words:
        end = start + len(w)
        overlap = {i: min(end, e["end"]) - max(start, e["start"]) for i, e in enumerate(entities)}
        best = max(overlap, key=overlap.get, default=None)
        hit = entities[best] if best is not None and overlap[best] > 0 else None
        types.append(entity_type(hit["entity_group"]) if hit else "O")
        start = end + 1
    return types


def word_accuracies(learn, df) -> tuple[float, float]:
    """Entity-type accuracy per word of a token-classification learner on `df` (words, tags), read two ways:
    `learn.predict(words)` and `learn.predict_entities(" ".join(words), aggregation_strategy="first")`."""
    right_words = right_text = total = 0
    with learn.no_bar():
        for words, tags in zip(df.words, df.tags):
            gold = [entity_type(t) for t in tags]
            via_words = [entity_type(t) for t in learn.predict(words)[0]]
            via_text = word_types_from_entities(words, learn.predict_entities(" ".join(words),
                                                                              aggregation_strategy="first"))
            right_words += sum(a == b for a, b in zip(gold, via_words))
            right_text += sum(a == b for a, b in zip(gold, via_text))
            total += len(gold)
    return right_words / total, right_text / total
