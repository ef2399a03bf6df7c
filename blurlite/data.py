"""Shared core for text tasks: tokenize once, pad per batch, bucket by length, dict batches."""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.data.block import TransformBlock
from fastai.data.load import fa_collate
from fastai.text.core import TitledStr
from fastai.text.data import SortedDL
from fastai.torch_core import TensorBase, batch_to_samples, explode_types, retain_type, to_detach
from fastcore.basics import compose, getcallable
from fastcore.foundation import L
from fasttransform import ItemTransform
from torch.nn.utils.rnn import pad_sequence

from .checks import check_batch_size, check_columns, describe_item, is_missing, plain
from .fastai_compat import DOC_IDS, support_mapping_batches

__all__ = ["IGNORE_INDEX", "HFTextInput", "HFTextPair", "TensorTokenLabels", "HFTokenize", "HFSortedDL", "HFTextBlock",
           "model_max_length", "tokenizer_pad_values", "find_hf_transform", "unpad_batch", "split_rows", "truncate_words", "pad_batches",
           "DOC_IDS", "LONG_TEXTS", "WINDOW_AGGREGATIONS", "HFWindowedDL", "aggregate_windows", "is_document",
           "is_token_key", "loader_setting"]

IGNORE_INDEX = -100  # ignored by CrossEntropyLoss and by HF models' own losses
_UNBOUNDED = 1_000_000  # tokenizers built without a limit report model_max_length ~1e30
LONG_TEXTS = ("truncate", "windows")  # what `HFTextBlock(long_texts=...)` does with a text beyond max_length
WINDOW_AGGREGATIONS = ("mean", "max")  # how a document's window logits make its own (`window_agg`)


class HFTextInput(dict):
    """Tokenizer outputs as tensors (`input_ids`, `attention_mask`, ...): 1-D for one text, 2-D for a padded batch.

    Values as long as `input_ids` are per-token (padded with the tokens, unpadded by the attention mask) unless a
    subclass names them in `non_token_keys` (e.g. a text's characters, whose length may happen to match)."""
    non_token_keys: frozenset = frozenset()


def is_token_key(x: Mapping, key: str, n_tokens: int) -> bool:
    "Whether `x[key]` holds one value per token of `x` (`n_tokens` of them): padded and unpadded with the tokens."
    return key not in getattr(type(x), "non_token_keys", ()) and len(x[key]) == n_tokens


class TensorTokenLabels(TensorBase):
    "Per-token targets (label ids, masked-token ids); batches pad them with `IGNORE_INDEX`, like the inputs."
    pad_value = IGNORE_INDEX


class HFTextPair(NamedTuple):
    "A decoded sentence pair (a named tuple, so fastai's transforms keep it whole)."
    text: str
    text_pair: str


def model_max_length(hf_config, hf_tokenizer, hf_model=None) -> int | None:
    "The longest input the model accepts: the tokenizer's limit and the position embeddings' size, if known."
    limits = []
    if getattr(hf_tokenizer, "model_max_length", None) and hf_tokenizer.model_max_length < _UNBOUNDED:
        limits.append(int(hf_tokenizer.model_max_length))
    n_positions = getattr(hf_config, "max_position_embeddings", None)
    if n_positions:
        # position ids that start after a padding index (RoBERTa-style) leave padding_idx + 1 positions unused
        position_embeddings = [m for name, m in (hf_model.named_modules() if hf_model is not None else [])
                               if name.endswith("position_embeddings") and isinstance(m, torch.nn.Embedding)]
        padding_idx = position_embeddings[0].padding_idx if position_embeddings else None
        limits.append(n_positions - (padding_idx + 1 if padding_idx is not None else 0))
    return min(limits) if limits else None


def tokenizer_pad_values(hf_tokenizer) -> dict[str, int]:
    "The value that pads each tokenizer output key a text block asks for (a task adds its own keys' values)."
    if hf_tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set one first, e.g. "
                         "hf_tokenizer.pad_token = hf_tokenizer.eos_token")
    return {"input_ids": hf_tokenizer.pad_token_id, "token_type_ids": hf_tokenizer.pad_token_type_id,
            "attention_mask": 0}


def _text_key(x, where=lambda: "input") -> str | tuple[str, str]:
    "A validated, hashable form of one text or text pair; errors name `where()` it comes from."
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple, L)) and len(x) == 2 and all(isinstance(t, str) for t in x):
        return (x[0], x[1])
    if is_missing(x) or (isinstance(x, (list, tuple, L)) and any(is_missing(t) for t in x)):
        raise ValueError(f"{where()}: the text is missing ({x!r}); drop or fill that row")
    raise TypeError(f"{where()}: expected a str or a [text, text_pair] pair of str, got {type(x).__name__} {x!r}")


def _column_name(items) -> str | None:
    "The column an item pipeline reads its text from, when it is a `ColReader`."
    for tfm in getattr(getattr(items, "tfms", None), "fs", []):
        if getattr(tfm, "cols", None) is not None:
            return str(list(tfm.cols)) if len(tfm.cols) > 1 else repr(tfm.cols[0])
    return None


def _singles_and_pairs(keys: list) -> list[tuple]:
    "`(positions, texts, text_pairs)` of the single texts (text_pairs None) and of the pairs among `keys`, if any."
    singles = [i for i, k in enumerate(keys) if isinstance(k, str)]
    pairs = [i for i, k in enumerate(keys) if not isinstance(k, str)]
    groups = [(singles, [keys[i] for i in singles], None),
              (pairs, [keys[i][0] for i in pairs], [keys[i][1] for i in pairs])]
    return [g for g in groups if g[0]]


class HFTokenize(ItemTransform):
    "Tokenize a text or a `[text, text_pair]` once: `setups` tokenizes every item in one batched call."
    train_setup = False  # setups sees training and validation items alike: both are tokenized up front
    input_type = HFTextInput
    _retain = False
    # class defaults: learners exported before long documents existed truncate
    long_texts, stride, window_agg = "truncate", None, "mean"

    def __init__(self, hf_tokenizer, max_length: int | None = None, truncation=True, tok_kwargs: dict | None = None,
                 long_texts: str = "truncate", stride: int | None = None, window_agg: str = "mean"):
        super().__init__()
        self.hf_tokenizer, self.max_length, self.truncation = hf_tokenizer, max_length, truncation
        self.tok_kwargs = dict(tok_kwargs or {})
        if long_texts != "truncate":  # only set when used: the default transform stays as it was
            self.long_texts, self.stride, self.window_agg = long_texts, stride, window_agg
        self.input_types = (str, list, tuple, L)  # lets `test_dl`/`predict` start the pipeline here
        self._cache, self.pairs = {}, False

    def __getstate__(self):
        # an exported learner must not carry its training texts
        return {**self.__dict__, "_cache": {}}

    def setups(self, items):
        if len(items) == 0:
            raise ValueError("the data is empty: there is no text to tokenize")
        column = _column_name(items)
        where = lambda i: lambda: describe_item(items, i) + (f", column {column}" if column else "")  # noqa: E731
        keys = [self.key(items[i], where(i), labelled=True) for i in range(len(items))]
        unique = list(dict.fromkeys(keys))
        self.pairs = any(isinstance(k, tuple) for k in unique)  # text pairs (for `save_pretrained`'s settings)
        self._cache = dict(zip(unique, self.tokenize(unique)))

    def key(self, x, where=lambda: "input", labelled=False):
        "The validated, hashable cache key of item `x` (`labelled`: it comes from training data)."
        return _text_key(x, where)

    def tokenize(self, keys: list) -> list[HFTextInput]:
        """Tokenize texts and text pairs in batched calls of the fast tokenizer; one `HFTextInput` per key.

        With `long_texts="windows"` each value is a list with one 1-D tensor per window of the document."""
        if self.long_texts == "windows":
            return self._tokenize_windows(keys)
        out = [None] * len(keys)
        for idxs, texts, text_pairs in _singles_and_pairs(keys):
            enc = self.hf_tokenizer(texts, text_pairs, truncation=self.truncation, max_length=self.max_length,
                                    return_attention_mask=True, **self.tok_kwargs)
            for j, i in enumerate(idxs):
                out[i] = HFTextInput({k: torch.tensor(enc[k][j]) for k in enc.keys()})
        return out

    def _tokenize_windows(self, keys: list) -> list[HFTextInput]:
        """Documents as overlapping windows of at most `max_length` tokens, special tokens included, `stride` tokens
        shared by neighbours: the fast tokenizer's overflow (as HF's question answering); pairs keep the first text
        whole in every window and cut the second."""
        out = [None] * len(keys)
        for idxs, texts, text_pairs in _singles_and_pairs(keys):
            try:
                enc = self.hf_tokenizer(texts, text_pairs, truncation=True if text_pairs is None else "only_second",
                                        max_length=self.max_length, stride=self.stride, return_overflowing_tokens=True,
                                        return_attention_mask=True, **self.tok_kwargs)
            except Exception as e:  # tokenizers raises a bare Exception when the first text leaves no room
                if text_pairs is None or "truncat" not in str(e).lower():
                    raise
                raise ValueError(f"long_texts='windows' keeps the first text of a pair whole in every window: with "
                                 f"max_length={self.max_length} and stride={self.stride}, a first text leaves no "
                                 "room for the second; shorten the first texts, raise max_length or lower stride "
                                 f"({e})") from e
            windows = [[] for _ in idxs]
            for w, doc in enumerate(enc["overflow_to_sample_mapping"]):
                windows[doc].append(w)
            names = [k for k in enc.keys() if k != "overflow_to_sample_mapping"]
            for j, i in enumerate(idxs):
                out[i] = HFTextInput({k: [torch.tensor(enc[k][w]) for w in windows[j]] for k in names})
        return out

    def encodes(self, x: str | list | tuple | L) -> HFTextInput:
        key = self.key(x)
        cached = self._cache.get(key)
        return type(cached)(cached) if cached is not None else self.tokenize([key])[0]

    def decodes(self, x: HFTextInput):
        "Readable text (an `HFTextPair` for pairs), split at separator tokens, special tokens dropped."
        if is_document(x):
            return self._decode_segments(self._merge_windows([w.tolist() for w in x["input_ids"]]))
        return self._decode_segments(self._segments(x["input_ids"].tolist()))

    def _segments(self, ids: list[int]) -> list[list[int]]:
        "Token ids split at separator tokens."
        sep = self.hf_tokenizer.sep_token_id
        segments, current = [], []
        for token in ids:
            if token == sep and sep is not None:
                segments.append(current)
                current = []
            else:
                current.append(token)
        segments.append(current)
        return segments

    def _merge_windows(self, windows: list[list[int]]) -> list[list[int]]:
        "A document's segments from its windows: the cut (last) segment of a window loses the `stride` tokens it shares."
        special = set(self.hf_tokenizer.all_special_ids)
        per_window = [[s for s in ([t for t in seg if t not in special] for seg in self._segments(w)) if s]
                      for w in windows]
        per_window = [w or [[]] for w in per_window]
        last = per_window[0][-1] + [t for w in per_window[1:] for t in w[-1][self.stride or 0:]]
        return per_window[0][:-1] + [last]

    def _decode_segments(self, segments: list[list[int]]):
        texts = [self.hf_tokenizer.decode(s, skip_special_tokens=True) for s in segments]
        texts = [t for t in texts if t.strip()] or [""]
        return TitledStr(texts[0]) if len(texts) == 1 else HFTextPair(TitledStr(texts[0]), TitledStr(" ".join(texts[1:])))


def split_rows(df: pd.DataFrame, valid_col, valid_pct: float, seed) -> tuple[list[int], list[int]]:
    "Positions of the training and validation rows of `df`: from a True/False `valid_col`, or a random `valid_pct`."
    if valid_col is not None:
        check_columns(df, [valid_col], "valid")
        flags = df[valid_col]
        bad = [i for i, v in zip(df.index, flags) if v not in (0, 1)]
        if bad:
            raise ValueError(f"column {valid_col!r} must be True/False; row {bad[0]!r} holds {plain(flags[bad[0]])!r}")
        is_valid = flags.to_numpy(dtype=bool)
    else:
        rng = np.random.default_rng(seed)
        is_valid = np.zeros(len(df), dtype=bool)
        is_valid[rng.permutation(len(df))[: int(round(valid_pct * len(df)))]] = True
    train, valid = np.flatnonzero(~is_valid).tolist(), np.flatnonzero(is_valid).tolist()
    if not train:
        raise ValueError("the training set is empty: lower valid_pct or mark fewer rows in the valid column")
    return train, valid


def find_hf_transform(dls):
    "The tokenizing transform of a blurlite `DataLoaders`/`DataLoader`."
    dataset = getattr(dls, "train_ds", None) or getattr(dls, "dataset", None)
    pipelines = [tl.tfms for tl in dataset.tls] if hasattr(dataset, "tls") else [getattr(dataset, "tfms", None)]
    for pipeline in pipelines:
        for tfm in getattr(pipeline, "fs", []):
            if isinstance(tfm, HFTokenize):
                return tfm
    raise ValueError("these DataLoaders have no blurlite text block: build them with HFTextBlock "
                     "(or HFTextDataLoaders.from_df)")


def _item_lengths(dl) -> list[int]:
    "Token count of every item; processing each item once also surfaces bad rows, named, at creation time."
    lengths = []
    for i in range(len(dl.dataset)):
        try:
            item = dl.do_item(i)
        except (KeyError, ValueError, TypeError) as e:
            message = e.args[0] if e.args else repr(e)
            raise ValueError(f"{describe_item(dl.dataset, i)}: {message}") from e
        x = item[0] if isinstance(item, tuple) else item
        lengths.append(len(x["input_ids"]))
    return lengths


def _unpad(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None or t.ndim == 0 or t.shape[0] != keep.shape[0] else t[keep.bool()]


def _split_field(field, keep, n: int) -> list:
    "One batch field as `n` samples; dict inputs and token-level fields lose their padding."
    if isinstance(field, Mapping):
        skip = getattr(type(field), "non_token_keys", ())
        return [type(field)({k: _unpad(v[i], None if keep is None or k in skip else keep[i])
                             for k, v in field.items()}) for i in range(n)]
    if getattr(field, "pad_value", None) is not None and keep is not None:
        return [_unpad(field[i], keep[i]) for i in range(n)]
    return list(batch_to_samples(field, max_n=n))


def is_document(x) -> bool:
    "Whether `x` is one document cut into windows (`HFTextBlock(long_texts=\"windows\")`): lists of 1-D tensors."
    return isinstance(x, Mapping) and isinstance(x.get("input_ids"), list)


def _split_documents(fields: list, max_n: int) -> list[tuple]:
    "Samples of a batch of windows: one per document, its windows' values as lists of unpadded 1-D tensors."
    x = fields[0]
    doc_ids, keep = x[DOC_IDS], x.get("attention_mask")
    n = min(max_n, int(doc_ids.max()) + 1 if len(doc_ids) else 0)
    docs = []
    for d in range(n):
        rows = torch.nonzero(doc_ids == d).flatten().tolist()
        skip = getattr(type(x), "non_token_keys", ())
        docs.append(type(x)({k: [_unpad(v[r], None if keep is None or k in skip else keep[r]) for r in rows]
                             for k, v in x.items() if k != DOC_IDS}))
    columns = [docs] + [_split_field(f, None, n) for f in fields[1:]]
    return [tuple(c[i] for c in columns) for i in range(n)]


def unpad_batch(b, max_n: int = 9) -> list[tuple]:
    "Split a batch `(x_dict, y, ...)` into at most `max_n` samples with padding removed (windows: one per document)."
    fields = list(b) if isinstance(b, (tuple, list)) else [b]
    if isinstance(fields[0], Mapping) and DOC_IDS in fields[0]:
        return _split_documents(fields, max_n)
    masks = [f["attention_mask"] for f in fields if isinstance(f, Mapping) and "attention_mask" in f]
    keep = masks[0] if masks else None
    first = fields[0]
    n = min(max_n, len(next(iter(first.values())) if isinstance(first, Mapping) else first))
    columns = [_split_field(f, keep, n) for f in fields]
    return [tuple(c[i] for c in columns) for i in range(n)]


class HFSortedDL(SortedDL):
    """A `SortedDL` whose batches are dicts padded to their longest item; items are bucketed by token count.

    `pad_to_multiple_of` rounds each batch's length up (at most to `pad_limit`, the block's `max_length`): on a
    GPU, few distinct shapes spare kernels planned per shape (cuDNN attention); "auto" is 32 on CUDA and none
    elsewhere (on a CPU every padding token costs its share). `pad_to` pads every batch to one length.
    """

    def __init__(self, dataset, pad_values: dict | None = None, padding_side: str = "right",
                 pad_to: int | None = None, pad_to_multiple_of: int | str | None = "auto", pad_limit: int | None = None,
                 res=None, num_workers: int = 0, **kwargs):
        support_mapping_batches()
        self.pad_values, self.padding_side, self.pad_to = dict(pad_values or {}), padding_side, pad_to
        self.pad_to_multiple_of, self.pad_limit = pad_to_multiple_of, pad_limit
        # items are cached token ids: worker processes would cost more than they save
        super().__init__(dataset, sort_func=_input_length, res=[] if res is None else res,
                         num_workers=num_workers, **kwargs)
        if res is None:  # after SortedDL's init, so that item transforms (label alignment) run too
            self.res = _item_lengths(self)
            if self.res:
                self.idx_max = int(np.argmax(self.res))
        if self.drop_last:
            check_batch_size(len(dataset), self.bs)

    def new(self, dataset=None, **kwargs):
        kwargs = {"pad_values": self.pad_values, "padding_side": self.padding_side, "pad_to": self.pad_to,
                  "pad_to_multiple_of": self.multiple_setting, "pad_limit": getattr(self, "pad_limit", None),
                  **kwargs}
        return super().new(dataset=dataset, **kwargs)

    @property
    def multiple_setting(self):
        return getattr(self, "pad_to_multiple_of", None)  # loaders exported before the setting existed: none

    @staticmethod
    def resolve_multiple(setting, device) -> int | None:
        "The multiple batch lengths are rounded up to on `device`: \"auto\" is 32 on CUDA, none elsewhere."
        if setting == "auto":
            return 32 if device is not None and torch.device(device).type == "cuda" else None
        return setting

    def batch_length(self, longest: int) -> int:
        "The length a batch whose longest item has `longest` tokens is padded to."
        if self.pad_to:
            return max(longest, self.pad_to)
        multiple = self.resolve_multiple(self.multiple_setting, getattr(self, "device", None))
        if not multiple:
            return longest
        rounded = -(-longest // multiple) * multiple
        limit = getattr(self, "pad_limit", None)
        return max(longest, min(rounded, limit)) if limit else rounded

    def to_detach(self, b, cpu=True, gather=True):
        # outside `distrib_ctx` (which wraps this loader) every process runs the whole loader: fastai would
        # all-gather whenever WORLD_SIZE > 1, repeating each prediction once per process
        return to_detach(b, cpu, gather=False)

    def create_batch(self, samples):
        inputs = [s[0] for s in samples if isinstance(s[0], Mapping)]
        length = self.batch_length(max(len(x["input_ids"]) for x in inputs)) if inputs else None
        return tuple(self._collate_field(list(field), length) for field in zip(*samples))

    def _collate_field(self, values: list, length: int | None = None):
        first = values[0]
        if isinstance(first, Mapping):
            n_tokens = len(first["input_ids"])  # only per-token keys are padded up to the batch length
            return type(first)({k: self._pad([v[k] for v in values], self.pad_values.get(k, 0),
                                             length if is_token_key(first, k, n_tokens) else None) for k in first})
        pad_value = getattr(first, "pad_value", None)
        if pad_value is not None and first.ndim > 0:  # token-level targets are padded like the inputs
            return type(first)(self._pad(values, pad_value, length))
        return fa_collate(values)

    def _pad(self, tensors: list, value: int, pad_to: int | None = None) -> torch.Tensor:
        batch = pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=self.padding_side)
        if pad_to and batch.shape[1] < pad_to:
            extra = pad_to - batch.shape[1]
            batch = F.pad(batch, (extra, 0) if self.padding_side == "left" else (0, extra), value=value)
        return batch

    def _one_pass(self):
        # as fastai's, without the device move: `to_device` turns dict subclasses into plain dicts, and the
        # types recorded here are the ones `decode` restores for `show_batch` dispatch; batch transforms that
        # apply to one split only (e.g. masking) see this loader's split, as in `before_iter`
        split_idx = getattr(self.dataset, "split_idx", None)
        for name in ("before_batch", "after_batch"):
            getattr(self, name).split_idx = split_idx
        its = self.after_batch(self.do_batch([self.do_item(None)]))
        self._n_inp = 1 if not isinstance(its, (list, tuple)) or len(its) == 1 else len(its) - 1
        self._types = explode_types(its)

    def decode(self, b):
        "Decode `b`, keeping blurlite's input types (fastai's `to_cpu` turns dicts into plain dicts)."
        return self._retain_dl(super().decode(b))

    def _decode_batch(self, b, max_n=9, full=True):
        f = compose(self.before_batch.decode, self.after_item.decode,
                    partial(getcallable(self.dataset, "decode"), full=full))
        return L(unpad_batch(b, max_n=max_n)).map(f)


def aggregate_windows(preds: torch.Tensor, doc_ids: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One row per document from one row per window: the mean (default) or the element-wise max of its windows'
    rows (logits, before any activation). `doc_ids[i]` is window i's document, 0 to n_docs - 1."""
    n_docs = int(doc_ids.max()) + 1 if len(doc_ids) else 0
    index = doc_ids.to(preds.device).long()
    if how == "max":
        spread = index.view(-1, *([1] * (preds.ndim - 1))).expand_as(preds)
        return preds.new_zeros((n_docs, *preds.shape[1:])).scatter_reduce(0, spread, preds, "amax", include_self=False)
    if how != "mean":
        raise ValueError(f"window_agg must be one of {WINDOW_AGGREGATIONS}, got {how!r}")
    total = preds.new_zeros((n_docs, *preds.shape[1:])).index_add(0, index, preds)
    counts = torch.bincount(index, minlength=n_docs).to(preds.dtype)
    return total / counts.view(-1, *([1] * (preds.ndim - 1)))


def loader_setting(learn, name: str, default):
    """Setting `name` of the loader `learn` runs (a distributed loader's inner one), else of its training loader,
    else `default` (e.g. `window_agg`, which `get_preds(dl=[batch])` does not carry)."""
    dl = getattr(learn, "dl", None)
    dl = getattr(dl, "dl", dl)  # a distributed loader wraps the blurlite one
    value = getattr(dl, name, None)
    return value if value is not None else getattr(getattr(learn.dls, "train", None), name, default)


def _window(x: Mapping, k: int) -> HFTextInput:
    "Window `k` of document `x`, as an ordinary tokenized item."
    return type(x)({key: v[k] for key, v in x.items()})


def _window_lengths(dl) -> list[list[int]]:
    "Token count of every window of every document of `dl`'s dataset (once, when the loader is built)."
    lengths = []
    for i in range(len(dl.dataset)):
        try:
            item = dl.after_item(dl.dataset[i])
        except (KeyError, ValueError, TypeError) as e:
            message = e.args[0] if e.args else repr(e)
            raise ValueError(f"{describe_item(dl.dataset, i)}: {message}") from e
        x = item[0] if isinstance(item, tuple) else item
        lengths.append([len(w) for w in x["input_ids"]])
    return lengths


class HFWindowedDL(HFSortedDL):
    """An `HFSortedDL` over documents cut into windows (`HFTextBlock(long_texts="windows")`).

    The shuffled training loader takes windows as its items, each with its document's target (bucketed by length,
    as ever). Every other loader (validation, `get_preds`, `show_results`, `test_dl`, `predict`) takes documents:
    a batch holds `bs` whole documents (bucketed by length), their windows in one padded dict, and `doc_ids` (not a
    model input) says which document each window is from. The model runs such a batch `bs` windows at a time
    (`HFModelWrapper`), so a document of any length fits in memory; `HFModelCallback` turns the window logits into
    one row per document (`window_agg`: "mean" or "max" of the logits), so losses, metrics and predictions are per
    document.
    """

    def __init__(self, dataset, window_agg: str = "mean", window_lengths: list | None = None, res=None,
                 drop_last=False, **kwargs):
        self.window_agg = window_agg
        # lengths come below; the batch-size check too, against windows or documents
        super().__init__(dataset, res=[], drop_last=False, **kwargs)
        self.drop_last = drop_last
        self.window_lengths = _window_lengths(self) if window_lengths is None else window_lengths
        self.n_windows = [len(w) for w in self.window_lengths]
        if self.window_items:
            self.window_doc = np.repeat(np.arange(len(self.n_windows)), self.n_windows)
            self.window_k = np.concatenate([np.arange(n) for n in self.n_windows] or [np.zeros(0, int)])
            self.res = [n for w in self.window_lengths for n in w]
        else:
            self.res = [sum(w) for w in self.window_lengths]
        self.n = len(self.res)
        if self.res:
            self.idx_max = int(np.argmax(self.res))
        if self.drop_last:
            check_batch_size(self.n, self.bs)

    @property
    def window_items(self) -> bool:
        "Whether items are windows (the shuffled training loader), else documents."
        return bool(self.shuffle) and getattr(self.dataset, "split_idx", None) == 0

    def new(self, dataset=None, **kwargs):
        kwargs = {"window_agg": self.window_agg,
                  "window_lengths": self.window_lengths if dataset is None else None, **kwargs}
        return super().new(dataset=dataset, **kwargs)

    def create_item(self, s):
        if not self.window_items:
            return super().create_item(s)
        s = 0 if s is None else s
        item = self.dataset[int(self.window_doc[s])]
        return (_window(item[0], int(self.window_k[s])), *item[1:])

    def shuffle_fn(self, idxs):
        # fastai's SortedDL shuffle over `self.n` items (windows here, not dataset rows)
        idxs = np.random.permutation(self.n)
        at_max = np.where(idxs == self.idx_max)[0][0]
        idxs[0], idxs[at_max] = idxs[at_max], idxs[0]
        sz = self.bs * 50
        chunks = [sorted(idxs[i:i + sz], key=lambda i: self.res[i], reverse=True) for i in range(0, len(idxs), sz)]
        sort_idx = np.concatenate(chunks)
        batches = [sort_idx[i:i + self.bs] for i in range(0, len(sort_idx), self.bs)]
        middle = [batches[1 + i] for i in np.random.permutation(len(batches) - 2)] if len(batches) > 2 else []
        ordered = [batches[0], *middle] + ([batches[-1]] if len(batches) > 1 else [])
        return iter(np.concatenate(ordered))

    def create_batch(self, samples):
        if not samples or not is_document(samples[0][0]):
            return super().create_batch(samples)
        windows, doc_ids = [], []
        for d, sample in enumerate(samples):
            n = len(sample[0]["input_ids"])
            windows += [(_window(sample[0], k),) for k in range(n)]
            doc_ids += [d] * n
        x = super().create_batch(windows)[0]
        x[DOC_IDS] = torch.tensor(doc_ids)
        return (x, *(self._collate_field(list(field)) for field in zip(*(s[1:] for s in samples))))


def _pad_dim1(t: torch.Tensor, length: int, value, side: str) -> torch.Tensor:
    extra = length - t.shape[1]
    if extra <= 0:
        return t
    pad = [0, 0] * (t.ndim - 2) + ([extra, 0] if side == "left" else [0, extra])
    return retain_type(F.pad(t, pad, value=value), t)


def pad_batches(batches: list, pad_values: dict | None = None, padding_side: str = "right", key=None,
                default=0) -> list:
    """Per-batch results (tensors, dicts or tuples of them) whose token dimension (dim 1) differs between batches,
    padded to the longest, so that they concatenate into one tensor (fastai's `get_preds`).

    Batches that agree on dim 1 (sequence-level outputs) are left as they are. Pad values: a dict key's entry in
    `pad_values`, else `default`.
    """
    if not batches:
        return batches
    first = batches[0]
    if isinstance(first, Mapping):
        columns = {k: pad_batches([b[k] for b in batches], pad_values, padding_side, k, default) for k in first}
        return [type(b)({k: columns[k][i] for k in first}) for i, b in enumerate(batches)]
    if isinstance(first, (tuple, list)) and not isinstance(first, L):
        columns = [pad_batches([b[j] for b in batches], pad_values, padding_side, None, default)
                   for j in range(len(first))]
        return [type(b)(c[i] for c in columns) for i, b in enumerate(batches)]
    return _pad_tensors(batches, pad_values, padding_side, key, default)


def _pad_tensors(batches: list, pad_values, padding_side: str, key, default) -> list:
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 2 for t in batches):
        return batches
    lengths = {t.shape[1] for t in batches}
    if len(lengths) == 1:
        return batches
    value = (pad_values or {}).get(key, default)
    return [_pad_dim1(t, max(lengths), value, padding_side) for t in batches]


def truncate_words(text: str, trunc_at: int | None) -> str:
    "`text`'s first `trunc_at` space-separated words (all with None): `show_batch`/`show_results`' `trunc_at`."
    return text if trunc_at is None else " ".join(str(text).split(" ")[:trunc_at])


def _input_length(item) -> int:
    return len(item[0]["input_ids"])


class HFTextBlock(TransformBlock):
    """A `TransformBlock` for a `str` or a `[text, text_pair]`: batches are padded dicts of tensors.

    Texts longer than `max_length` are truncated, or with `long_texts="windows"` cut into overlapping windows
    (`stride` tokens shared, default max_length // 4; see `HFWindowedDL`), whose logits make one prediction per text
    (`window_agg`: "mean" or "max").

    Example: `DataBlock(blocks=(HFTextBlock(*hf_objects, max_length=128), CategoryBlock), get_x=ColReader("text"), ...)`
    """
    tokenize_cls = HFTokenize

    def __init__(self, hf_arch, hf_config, hf_tokenizer, hf_model, max_length: int | None = None, padding=True,
                 truncation=True, tok_kwargs: dict | None = None, pad_values: dict | None = None,
                 long_texts: str = "truncate", stride: int | None = None, window_agg: str = "mean"):
        limit = model_max_length(hf_config, hf_tokenizer, hf_model)
        if max_length is None or (limit is not None and max_length > limit):
            max_length = limit
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length (the model reports no limit)")
        self.max_length = max_length
        if long_texts == "truncate" and (stride is not None or window_agg != "mean"):
            raise ValueError("stride and window_agg are for long_texts='windows' (texts are truncated otherwise)")
        windows = {} if long_texts == "truncate" else _window_settings(hf_tokenizer, max_length, truncation,
                                                                       long_texts, stride, window_agg)
        tokenize = self.tokenize_cls(hf_tokenizer, max_length=max_length, truncation=truncation,
                                     tok_kwargs=tok_kwargs, **windows)
        # `pad_values`: what pads the keys a task's transforms add (e.g. word ids), beyond the tokenizer's
        dls_kwargs = dict(pad_values={**tokenizer_pad_values(hf_tokenizer), **(pad_values or {})},
                          padding_side=hf_tokenizer.padding_side,
                          pad_to=max_length if padding == "max_length" else None, pad_limit=max_length)
        if windows:
            dls_kwargs["window_agg"] = windows["window_agg"]
        super().__init__(type_tfms=[tokenize], dl_type=HFWindowedDL if windows else HFSortedDL, dls_kwargs=dls_kwargs)


def _window_settings(hf_tokenizer, max_length, truncation, long_texts, stride, window_agg) -> dict:
    "Checked settings of `long_texts=\"windows\"` for the tokenizing transform; the default stride is max_length // 4."
    if long_texts not in LONG_TEXTS:
        raise ValueError(f"long_texts must be one of {LONG_TEXTS}, got {long_texts!r}")
    if window_agg not in WINDOW_AGGREGATIONS:
        raise ValueError(f"window_agg must be one of {WINDOW_AGGREGATIONS}, got {window_agg!r}")
    if not getattr(hf_tokenizer, "is_fast", False):
        raise ValueError("long_texts='windows' needs a fast tokenizer (its overflow makes the windows): load it "
                         "with get_hf_objects(...) / AutoTokenizer.from_pretrained(..., use_fast=True)")
    if max_length is None:
        raise ValueError("long_texts='windows' needs max_length (the model reports no limit)")
    if truncation is not True:
        raise ValueError(f"long_texts='windows' cuts texts into windows: leave truncation=True (got {truncation!r})")
    room = max_length - hf_tokenizer.num_special_tokens_to_add(pair=False)
    stride = max_length // 4 if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or not 0 <= stride < room:
        raise ValueError(f"stride must be an int from 0 to {room - 1} (tokens shared by neighbouring windows of "
                         f"{room} text tokens at max_length={max_length}), got {stride!r}")
    return {"long_texts": long_texts, "stride": stride, "window_agg": window_agg}
