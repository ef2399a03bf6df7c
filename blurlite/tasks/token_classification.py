"""Token classification (NER): word-level labels in, word-level labels and entities out."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import CategoryMap, ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.metrics import Metric
from fastai.torch_core import display_df
from fastcore.basics import patch
from fastcore.foundation import L
from fasttransform import DisplayedTransform, ItemTransform
from plum import dispatch
from transformers import AutoModelForTokenClassification, TokenClassificationPipeline

from ..adapters import plain_model
from ..checks import check_columns, check_frame, is_missing
from ..data import (IGNORE_INDEX, HFTextBlock, HFTextInput, HFTokenize, TensorTokenLabels, find_hf_transform,
                    split_rows)
from ..hf_objects import get_hf_objects
from ..losses import TokenCrossEntropyLossFlat
from ..ranks import gather_rows
from . import HFTask, pipeline_in_length_order, register_task, set_model_labels, task_for

__all__ = ["HFTokenClassInput", "HFWords", "HFTokenizeWords", "HFTokenClassBlock",
           "TokenCategorize", "TokenCategoryBlock", "AlignWordLabels", "HFTokenClassDataLoaders",
           "word_ids_from_offsets", "align_word_labels", "word_labels_from_tokens", "read_conll", "entity_f1", "entity_precision",
           "entity_recall", "token_accuracy", "SeqevalMetric"]

TASK_NAME = "token-classification"
NON_MODEL_KEYS = frozenset({"word_ids", "n_words", "offset_mapping"})  # alignment and decoding, not model inputs
PAD_VALUES = {"word_ids": -1}  # padding belongs to no word


class HFTokenClassInput(HFTextInput):
    "Token ids of a token-classification item or batch, with `word_ids` (-1: no word) and `n_words`."


class HFWords(list):
    "A decoded list of words."


def align_word_labels(word_ids: list[int | None], word_labels: list[int], first_only: bool = True) -> list[int]:
    """Spread word labels over sub-tokens; IGNORE_INDEX marks tokens the loss skips."""
    aligned, previous = [], None
    for word_id in word_ids:
        starts_word = word_id is not None and word_id != previous
        labelled = starts_word or (word_id is not None and not first_only)
        aligned.append(word_labels[word_id] if labelled else IGNORE_INDEX)
        previous = word_id
    return aligned


def word_labels_from_tokens(word_ids: list[int], token_labels: list[int], n_words: int) -> list[int]:
    "One label per word: the label of its first sub-token; IGNORE_INDEX for words without a token."
    labels = [IGNORE_INDEX] * n_words
    for position in range(len(word_ids) - 1, -1, -1):  # backwards, so the first sub-token wins
        if 0 <= word_ids[position] < n_words:
            labels[word_ids[position]] = token_labels[position]
    return labels


def _words(x, where=lambda: "input", labelled=False) -> tuple[str, ...]:
    "Validated words of one item: a list of str, or (at inference) a str split on whitespace."
    if isinstance(x, str):
        if labelled:
            raise TypeError(f"{where()}: the words are one str ({x[:40]!r}); give a list of words, e.g. "
                            "str.split() them, so that each label has its word")
        return tuple(x.split())
    if is_missing(x) or not isinstance(x, (list, tuple, L, np.ndarray)):
        raise TypeError(f"{where()}: expected a list of words, got {type(x).__name__} {x!r}")
    bad = [w for w in x if not isinstance(w, str)]
    if bad:
        raise TypeError(f"{where()}: every word must be a str, got {type(bad[0]).__name__} {bad[0]!r}")
    return tuple(x)


def word_ids_from_offsets(offsets, special, words, markers=None) -> np.ndarray:
    """Which word each token of `" ".join(words)` belongs to (-1: none), from the tokenizer's character offsets.

    A token belongs to the first word whose characters it overlaps (a byte-level BPE token whose offsets include
    the space before its word belongs to that word). Special tokens, and tokens that cover no character of a word
    (an empty offset), belong to none. A token flagged in `markers` (a lone "▁" or "Ġ" before a word) gets
    `-2 - word`: the pipelines' word heuristics take it for a word of its own and start the real word at the next
    token, so both are labelled with the word's label (`AlignWordLabels`), while the word's own tokens, from which
    its prediction is read, start after it.
    """
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    ends = np.cumsum(lengths + 1) - 1  # words joined by one space
    starts = ends - lengths
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    word = np.searchsorted(ends, offsets[:, 0], side="right")  # the first word ending after the token starts
    inside = word < len(words)
    hit = inside & (starts[np.minimum(word, len(words) - 1)] < offsets[:, 1]) & ~np.asarray(special, dtype=bool)
    word_ids = np.where(hit, word, -1)
    if markers is not None:
        word_ids = np.where(hit & np.asarray(markers, dtype=bool), -2 - word, word_ids)
    return word_ids


class HFTokenizeWords(HFTokenize):
    """Tokenize a list of words once, keeping which word each sub-token belongs to.

    The words are tokenized as the running text `" ".join(words)`, which is what `predict_entities(text)` and
    `pipeline("token-classification")` see: with byte-level BPE (RoBERTa, ModernBERT) or SentencePiece tokenizers, a
    word list tokenized word by word (`is_split_into_words=True`) gives other tokens than the same words in a text,
    and a model trained on one labels the other badly. Tokens map to words by their character offsets.
    """
    input_type = HFTokenClassInput

    def __init__(self, hf_tokenizer, max_length=None, truncation=True, tok_kwargs=None):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError("token classification needs a fast tokenizer: its character offsets align words and "
                             "sub-tokens; load the model's tokenizer with AutoTokenizer (use_fast=True)")
        super().__init__(hf_tokenizer, max_length=max_length, truncation=truncation, tok_kwargs=tok_kwargs)
        self.input_types = (str, list, tuple, L, np.ndarray)

    def key(self, x, where=lambda: "input", labelled=False):
        return _words(x, where, labelled)

    def __getstate__(self):
        return {**super().__getstate__(), "_blank": None}  # rebuilt from the tokenizer on first use

    def _blank_tokens(self) -> np.ndarray:
        "For each token id, whether the token holds no character of a word: a lone SentencePiece '▁' or 'Ġ'."
        if getattr(self, "_blank", None) is None:  # once per transform, not per call (`predict` tokenizes one item)
            tokens = self.hf_tokenizer.convert_ids_to_tokens(list(range(len(self.hf_tokenizer))))
            self._blank = np.array([t is not None and t != "" and t.strip("\u2581\u0120 ") == "" for t in tokens]
                                   + [False])
        return self._blank

    def tokenize(self, keys: list) -> list[HFTokenClassInput]:
        kwargs = {"return_offsets_mapping": True, "return_special_tokens_mask": True, **self.tok_kwargs}
        enc = self.hf_tokenizer([" ".join(k) for k in keys], truncation=self.truncation, max_length=self.max_length,
                                return_attention_mask=True, **kwargs)
        dropped = {k for k in ("offset_mapping", "special_tokens_mask") if k not in self.tok_kwargs}  # ours only
        blank = self._blank_tokens()
        out = []
        for j, words in enumerate(keys):
            item = HFTokenClassInput({k: torch.tensor(enc[k][j]) for k in enc.keys() if k not in dropped})
            markers = blank[np.minimum(np.asarray(enc["input_ids"][j]), len(blank) - 1)]
            word_ids = word_ids_from_offsets(enc["offset_mapping"][j], enc["special_tokens_mask"][j], words, markers)
            item["word_ids"] = torch.from_numpy(word_ids)
            item["n_words"] = torch.tensor([len(words)])
            out.append(item)
        limit = self.max_length or self.hf_tokenizer.model_max_length
        cut = sum(1 for k, x in zip(keys, out)  # words left without a token because the item is full
                  if len(x["input_ids"]) >= limit and any(w.strip() for w in k[int(x["word_ids"].max()) + 1:]))
        if cut and self.truncation:
            warnings.warn(f"{cut} of {len(keys)} word lists are longer than max_length={self.max_length} tokens: "
                          "their last words are cut (not learned from in training; labelled None by predict). Raise "
                          "max_length, or use predict_entities, which covers long texts with overlapping windows")
        return out

    def decodes(self, x: HFTokenClassInput) -> HFWords:
        "The words, each decoded from its sub-tokens ('' for a word without a token)."
        ids, word_ids = x["input_ids"].tolist(), x["word_ids"].tolist()
        groups = [[] for _ in range(int(x["n_words"][0]))]
        for token, word in zip(ids, word_ids):
            if 0 <= word < len(groups):
                groups[word].append(token)
        return HFWords(self.hf_tokenizer.decode(g).replace(" ", "") if g else "" for g in groups)


class AlignWordLabels(ItemTransform):
    "Item `(x, word_labels)` -> `(x, sub-token labels)` with the fast tokenizer's word ids; decodes back to words."
    _retain = False

    def __init__(self, first_only: bool = True):
        super().__init__()
        self.first_only = first_only

    def encodes(self, xy):
        if len(xy) < 2 or not isinstance(xy[0], HFTokenClassInput):
            return tuple(xy)
        x, y = xy[0], xy[1]
        n_words = int(x["n_words"][0])
        if len(y) != n_words:
            raise ValueError(f"{n_words} words but {len(y)} labels: each word needs one label")
        word_ids, labels = x["word_ids"].tolist(), y.tolist()
        aligned = align_word_labels([None if w < 0 else w for w in word_ids], labels, self.first_only)
        for position, w in enumerate(word_ids):  # a word-start marker token: labelled too (word_ids_from_offsets)
            if w <= -2:
                aligned[position] = labels[-2 - w]
        return (x, TensorTokenLabels(torch.tensor(aligned)), *xy[2:])

    def decodes(self, xy):
        if len(xy) < 2 or not isinstance(xy[0], HFTokenClassInput):
            return tuple(xy)
        x = xy[0]
        words = word_labels_from_tokens(x["word_ids"].tolist(), xy[1].tolist(), int(x["n_words"][0]))
        return (x, *[TensorTokenLabels(torch.tensor(words)) for _ in xy[1:]])


class TokenCategorize(DisplayedTransform):
    "Word labels <-> label ids, with a fixed vocab (`num_labels` comes from it); IGNORE_INDEX decodes to None."
    order = 1

    def __init__(self, vocab):
        super().__init__()
        self.vocab = CategoryMap(list(vocab), sort=False)
        self.loss_func = TokenCrossEntropyLossFlat()

    def encodes(self, labels: list | tuple | L | np.ndarray) -> TensorTokenLabels:
        unknown = [lb for lb in labels if lb not in self.vocab.o2i]
        if unknown:
            raise KeyError(f"label {unknown[0]!r} is not in the label vocab {list(self.vocab)}")
        return TensorTokenLabels(torch.tensor([self.vocab.o2i[lb] for lb in labels]))

    def decodes(self, ids: TensorTokenLabels) -> HFWords:
        return HFWords(None if i == IGNORE_INDEX else self.vocab[i] for i in ids.tolist())


def TokenCategoryBlock(vocab) -> TransformBlock:
    "A `TransformBlock` for word labels (a list per row), with the label vocabulary `vocab`."
    return TransformBlock(type_tfms=TokenCategorize(vocab))


class HFTokenClassBlock(HFTextBlock):
    """`HFTextBlock` for lists of words: `labeling="first"` labels each word's first sub-token, `"all"` every one.

    Example: `DataBlock(blocks=(HFTokenClassBlock(*hf_objects), TokenCategoryBlock(vocab=labels)), ...)`
    """
    tokenize_cls = HFTokenizeWords

    def __init__(self, hf_arch, hf_config, hf_tokenizer, hf_model, labeling: str = "first", max_length=None,
                 padding=True, truncation=True, tok_kwargs=None):
        if labeling not in ("first", "all"):
            raise ValueError(f"labeling must be 'first' or 'all', got {labeling!r}")
        super().__init__(hf_arch, hf_config, hf_tokenizer, hf_model, max_length=max_length, padding=padding,
                         truncation=truncation, tok_kwargs=tok_kwargs, pad_values=PAD_VALUES)
        self.item_tfms = [AlignWordLabels(first_only=labeling == "first")]


class HFTokenClassDataLoaders(DataLoaders):
    "Factory for token-classification `DataLoaders` from a DataFrame of word lists and tag lists (`read_conll`'s)."

    @classmethod
    def from_df(cls, df: pd.DataFrame, hf_objects_or_checkpoint, words_col="words", tags_col="tags", valid_col=None,
                valid_pct: float = 0.2, bs: int = 16, max_length: int | None = None, labeling: str = "first",
                seed: int | None = None, padding=True, tok_kwargs=None, **kwargs) -> DataLoaders:
        """`DataLoaders` for `df`, the label vocabulary taken from the tags of every split (sorted).

        A tag seen only in validation rows is legitimate data, but the model is trained on it nowhere: a warning
        names it.

        `hf_objects_or_checkpoint`: what `get_hf_objects` returns, or a checkpoint directory to load with a head
        sized to the labels (the model is then `dls.hf_model`). A str in `words_col`/`tags_col` is split on spaces.
        Example: `dls = HFTokenClassDataLoaders.from_df(read_conll("train.conll"), ckpt_dir, max_length=64)`
        """
        check_frame(df)
        check_columns(df, [words_col, tags_col], "words/tags")
        df = df.assign(**{c: [v.split() if isinstance(v, str) else v for v in df[c]] for c in (words_col, tags_col)})
        train, valid = split_rows(df, valid_col, valid_pct, seed)
        for row, tags in zip(df.index, df[tags_col]):
            if is_missing(tags) or not isinstance(tags, (list, tuple, np.ndarray)):
                raise ValueError(f"row {row!r}, column {tags_col!r}: expected a list of tags, got {tags!r}")
        labels = sorted({str(t) for tags in df[tags_col] for t in tags})  # every split's: a tag may be rare
        _warn_untrained_tags(df, tags_col, train, valid)
        hf_objects = hf_objects_or_checkpoint
        if not isinstance(hf_objects, tuple):
            hf_objects = get_hf_objects(hf_objects, model_cls=AutoModelForTokenClassification, config_kwargs=dict(
                num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}))
        dblock = DataBlock(blocks=(HFTokenClassBlock(*hf_objects, labeling=labeling, max_length=max_length,
                                                     padding=padding, tok_kwargs=tok_kwargs),
                                   TokenCategoryBlock(vocab=labels)),
                           get_x=ColReader(words_col), get_y=ColReader(tags_col), splitter=IndexSplitter(valid))
        dls = dblock.dataloaders(df, bs=bs, **kwargs)
        dls.hf_model = hf_objects[3]
        return dls


def _warn_untrained_tags(df, tags_col, train, valid) -> None:
    "Warn about tags that only validation rows hold: the model never sees them in training."
    trained = {str(t) for i in train for t in df[tags_col].iloc[i]}
    only_valid = {}
    for i in valid:
        for tag in df[tags_col].iloc[i]:
            only_valid.setdefault(str(tag), df.index[i]) if str(tag) not in trained else None
    if only_valid:
        shown = ", ".join(f"{tag!r} (e.g. row {row!r})" for tag, row in sorted(only_valid.items())[:5])
        warnings.warn(f"tag(s) {shown} appear only in validation rows: the model is trained on them nowhere; "
                      "move such rows to training for it to learn them", stacklevel=3)


def read_conll(path, word_col: int = 0, tag_col: int = -1) -> pd.DataFrame:
    """Read a CoNLL-style file (`token<TAB>tag` lines, sentences split by blank lines) into `words` and `tags`.

    Example: `df = read_conll("wnut17_train.conll")` -> one row per sentence, lists of words and tags.
    """
    sentences, words, tags = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        fields = line.rstrip("\n").split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise ValueError(f"{path}, line {number}: expected 'token<TAB>tag', got {line!r}")
        words.append(fields[word_col])
        tags.append(fields[tag_col].strip())
    if words:
        sentences.append((words, tags))
    return pd.DataFrame(sentences, columns=["words", "tags"])


# metrics: seqeval on word-level sequences (each word's first sub-token), conlleval-compatible by default
class SeqevalMetric(Metric):
    "Entity precision/recall/F1 (seqeval, default mode) or token accuracy over words, for the training table."

    def __init__(self, score: str = "f1"):
        if score not in ("f1", "precision", "recall", "accuracy"):
            raise ValueError(f"score must be f1, precision, recall or accuracy, got {score!r}")
        self.score = score
        self.reset()

    def reset(self):
        self.y_true, self.y_pred = [], []

    def accumulate(self, learn):
        vocab = learn.dls.vocab
        preds, targs = learn.pred.argmax(-1).tolist(), learn.yb[0].tolist()
        for p, t, w in zip(preds, targs, learn.xb[0]["word_ids"].tolist()):
            keep = [i for i in range(len(w)) if w[i] >= 0 and (i == 0 or w[i] != w[i - 1]) and t[i] != IGNORE_INDEX]
            self.y_true.append([vocab[t[i]] for i in keep])
            self.y_pred.append([vocab[p[i]] for i in keep])

    def gather_from_ranks(self):
        "In a distributed validation (blurlite calls it on every rank): every rank's sentences."
        self.y_true, self.y_pred = gather_rows(self.y_true), gather_rows(self.y_pred)

    @property
    def value(self):
        import seqeval.metrics

        if not any(self.y_true):
            return None
        score = {"f1": seqeval.metrics.f1_score, "precision": seqeval.metrics.precision_score,
                 "recall": seqeval.metrics.recall_score, "accuracy": seqeval.metrics.accuracy_score}[self.score]
        return score(self.y_true, self.y_pred)

    @property
    def name(self):
        return "token_accuracy" if self.score == "accuracy" else f"entity_{self.score}"


entity_f1, entity_precision, entity_recall, token_accuracy = (SeqevalMetric(s) for s in
                                                              ("f1", "precision", "recall", "accuracy"))


def _default_loss(dls):
    return TokenCrossEntropyLossFlat()


def _default_metrics(dls) -> list:
    return [SeqevalMetric(s) for s in ("precision", "recall", "f1", "accuracy")]


def _prepare_model(dls, hf_model) -> None:
    "`num_labels` comes from the label vocab: check the head against it and write the labels into the config."
    set_model_labels(hf_model, [str(v) for v in dls.vocab])


# display: one row per sample, each word with its label
def _tagged(words, labels, trunc_at=None) -> str:
    pairs = [f"{w}/{lb}" for w, lb in zip(words, labels)]
    return " ".join(pairs if trunc_at is None else pairs[:trunc_at])


@dispatch
def show_batch(x: HFTokenClassInput, y, samples, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    rows = [{"words": " ".join(s[0]), **({"target": _tagged(s[0], s[1], trunc_at)} if len(s) > 1 else {})}
            for s in samples[:max_n]]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def show_results(x: HFTokenClassInput, y, samples, outs, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    rows = [{"words": " ".join(s[0]), "target": _tagged(s[0], s[1], trunc_at),
             "prediction": _tagged(s[0], o[0], trunc_at)} for s, o in zip(samples[:max_n], outs)]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def plot_top_losses(x: HFTokenClassInput, y, samples, outs, raw_outs, losses, trunc_at=None, **kwargs):
    rows = [{"words": " ".join(s[0]), "target": _tagged(s[0], s[1], trunc_at),
             "predicted": _tagged(s[0], o[0], trunc_at), "loss": float(loss)}
            for s, o, loss in zip(samples, outs, losses)]
    display_df(pd.DataFrame(rows))


# inference
def _check_task(learn, method: str) -> None:
    if task_for(learn.dls).name != TASK_NAME:
        raise TypeError(f"{method} is for {TASK_NAME} learners; this learner is for {task_for(learn.dls).name}")


@patch
def predict_entities(self: Learner, text: str | list[str], aggregation_strategy: str = "simple",
                     stride: int | None = None, bs: int = 16):
    """Entities in `text`, as `pipeline("token-classification", aggregation_strategy=...)` returns them.

    A list of texts gives a list of results, computed `bs` texts at a time, longest first (less padding).
    Texts longer than the block's `max_length` are covered by overlapping windows (`stride`, by default a
    quarter of `max_length`) for every strategy but "none", which has no windows: its tokens past `max_length`
    are not labelled, and a warning says so.
    """
    _check_task(self, "predict_entities")
    texts = [text] if isinstance(text, str) else list(text)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"predict_entities takes a text or a list of texts; item {i} is {type(t).__name__}")
    tfm = find_hf_transform(self.dls)
    tokenizer = tfm.hf_tokenizer
    if tfm.max_length:  # the pipeline truncates and windows at the tokenizer's limit: make it the block's
        tokenizer = copy.copy(tokenizer)
        tokenizer.model_max_length = tfm.max_length
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]] if texts else []
    too_long = bool(tfm.max_length) and max(lengths, default=0) > tfm.max_length
    if too_long and stride is None and aggregation_strategy != "none":
        stride = tfm.max_length // 4
    elif too_long and aggregation_strategy == "none":
        warnings.warn(f"a text is longer than max_length={tfm.max_length} tokens: with aggregation_strategy="
                      "'none' the tokens past it get no label; use another strategy to cover them with windows")
    self.model.eval()
    pipe = TokenClassificationPipeline(model=plain_model(self.model.hf_model), tokenizer=tokenizer,
                                       device=next(self.model.parameters()).device)
    kwargs = {"aggregation_strategy": aggregation_strategy, **({"stride": stride} if stride else {})}
    if isinstance(text, str):
        return pipe(text, **kwargs)
    return pipeline_in_length_order(pipe, texts, bs, lengths, **kwargs)


def _word_level(learn, item, result: tuple) -> tuple:
    """`learn.predict`'s result with one row per word: each word's label id and probabilities are its first
    sub-token's (as its label is); a word cut off by `max_length` gets IGNORE_INDEX and a row of NaN."""
    decoded, token_ids, token_probs = result
    x = find_hf_transform(learn.dls).encodes(item)
    n_words, first = int(x["n_words"][0]), {}
    for position, word in enumerate(x["word_ids"].tolist()):
        if 0 <= word < n_words:
            first.setdefault(word, position)
    ids = torch.full((n_words,), IGNORE_INDEX, dtype=torch.long)
    probs = torch.full((n_words, token_probs.shape[-1]), float("nan"), dtype=token_probs.dtype)
    for word, position in first.items():
        ids[word], probs[word] = token_ids[position], token_probs[position]
    return decoded, ids, probs


# saving and the command line
def _settings(dls) -> dict:
    align = next(t for t in dls.train.after_item.fs if isinstance(t, AlignWordLabels))
    return {"labels": [str(v) for v in dls.vocab], "labeling": "first" if align.first_only else "all"}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free `DataLoaders` that turn words into batches and predictions into word labels, as the saved learner's."
    labels = settings["labels"]
    df = pd.DataFrame({"words": [["x"]] * bs, "tags": [[labels[0]]] * bs})
    dblock = DataBlock(blocks=(HFTokenClassBlock(*hf_objects, labeling=settings["labeling"], **block_kwargs),
                               TokenCategoryBlock(vocab=labels)),
                       get_x=ColReader("words"), get_y=ColReader("tags"), splitter=IndexSplitter([]))
    return dblock.dataloaders(df, bs=bs).new_empty()


def _read_conll_file(path) -> tuple[pd.DataFrame, dict]:
    return read_conll(path), {}


def _from_df(df, model, text_col="words", label_col="tags", valid_col=None, valid_pct=0.2, bs=16, max_length=None,
             seed=None):
    return HFTokenClassDataLoaders.from_df(df, model, words_col=text_col or "words", tags_col=label_col or "tags",
                                           valid_col=valid_col, valid_pct=valid_pct, bs=bs, max_length=max_length,
                                           seed=seed)


def _predict_json(learn, texts: list) -> list:
    return [[{**e, "score": float(e["score"])} for e in learn.predict_entities(t, aggregation_strategy="simple")]
            for t in texts]


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFTokenClassInput, auto_model=AutoModelForTokenClassification,
    default_loss=_default_loss, default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls,
    from_df=_from_df, predict_json=_predict_json, pipeline="token-classification", prepare_model=_prepare_model,
    predict_result=_word_level, peft_task_type="TOKEN_CLS",
    non_model_keys=NON_MODEL_KEYS, pad_values=PAD_VALUES, columns=("words", "tags"),
    readers={".conll": _read_conll_file, ".bio": _read_conll_file, ".iob": _read_conll_file}, aliases=("ner",),
    description="word-level tags (NER): a words column and a tags column of lists, or a CoNLL file"))
