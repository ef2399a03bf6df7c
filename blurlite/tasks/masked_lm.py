"""Masked language modelling: BERT masking on the fly, perplexity and masked accuracy, display, `fill_mask`."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, GatherPredsCallback
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.metrics import Metric
from fastai.text.core import TitledStr
from fastai.torch_core import display_df
from fastcore.basics import patch
from fastcore.foundation import L
from fasttransform import ItemTransform
from plum import dispatch
from transformers import AutoModelForMaskedLM, FillMaskPipeline

from ..adapters import plain_model
from ..checks import check_columns, check_frame, check_texts
from ..data import (IGNORE_INDEX, HFSortedDL, HFTextInput, HFTokenize, TensorTokenLabels, find_hf_transform,
                    model_max_length, split_rows, tokenizer_pad_values, truncate_words)
from ..hf_objects import get_hf_objects
from ..losses import TokenCrossEntropyLossFlat
from ..ranks import all_reduce_sums
from . import HFTask, pipeline_in_length_order, register_task, task_for

__all__ = ["HFMLMInput", "HFMaskedTokens", "HFTokenizeMLM", "MaskTokens", "MaskTokensFixed", "HFMLMBlock", "HFMLMDataLoaders",
           "MaskedLMLossFlat", "MaskedLMMetric", "MaskedLMLogitsCallback", "mlm_perplexity", "masked_accuracy", "mask_tokens", "group_texts"]

TASK_NAME = "fill-mask"
NON_MODEL_KEYS = frozenset({"word_ids", "special_tokens_mask"})  # for masking, not model inputs
PAD_VALUES = {"special_tokens_mask": 1, "word_ids": -1}  # padding is never masked and belongs to no word
_VALID_SEED = 20_240_601  # validation masks depend on this and the item only: comparable across epochs


class HFMLMInput(HFTextInput):
    "Token ids of a masked-LM item or batch, with `special_tokens_mask` and `word_ids` (-1: no word)."


class HFMaskedTokens(list):
    "Decoded per-position tokens of a target or prediction: the token where one is to be predicted, else None."


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, mask_token_id: int, vocab_size: int,
                mlm_probability: float = 0.15, word_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(masked_input_ids, labels)` for a batch, with BERT's rule.

    Of the `maskable` positions (not special tokens, not padding), `mlm_probability` are selected; of those, 80%
    become `mask_token_id`, 10% a random token and 10% stay. `labels` hold the original id at selected positions
    and IGNORE_INDEX elsewhere. With `word_ids` (-1: no word), whole words are selected: all their sub-tokens or none.
    Draws come from `generator` (torch's global one if None), made on the CPU and moved to the ids' device. With
    `seed`, they are instead a hash of the seed, the row's maskable ids and the position among them: a row's masks
    then depend on that row only, not on its batch, padding or process (validation, distributed or not).
    """
    shape, device = input_ids.shape, input_ids.device
    if seed is None:
        def uniform(draw: int, at: torch.Tensor | None = None, size=shape) -> torch.Tensor:
            return torch.rand(size, generator=generator)
    else:
        uniform = _row_hash_uniform(input_ids.cpu(), maskable.cpu().bool(), seed)
    if word_ids is None:
        selected = uniform(0) < mlm_probability
    else:  # one draw per (row, word), spread over the word's sub-tokens
        word_ids = word_ids.cpu()
        n_words = int(word_ids.max().clamp(min=0)) + 1
        picked = uniform(0, torch.arange(n_words).expand(shape[0], n_words), (shape[0], n_words)) < mlm_probability
        selected = picked.gather(1, word_ids.clamp(min=0)) & (word_ids >= 0)
    selected = selected.to(device) & maskable.bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = (uniform(1) < 0.8).to(device) & selected
    to_random = (uniform(2) < 0.5).to(device) & selected & ~to_mask
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    random_ids = (uniform(3) * vocab_size).long().clamp(max=vocab_size - 1).to(device, input_ids.dtype)
    return torch.where(to_random, random_ids, masked), labels


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    "A 32-bit integer hash (xor-shift-multiply, int64 arithmetic without overflow), elementwise."
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def _row_hash_uniform(ids: torch.Tensor, maskable: torch.Tensor, seed: int):
    """`uniform(draw, at=None, size=ids.shape)`: numbers in [0, 1) that hash (seed, the row's maskable ids, `at`,
    `draw`); `at` defaults to each position's rank among the row's maskable positions, so that neither padding
    (either side) nor the batch changes a row's numbers."""
    rank = (maskable.long().cumsum(1) - 1).clamp(min=0)
    tokens = _mix32((ids.long() & _M32) ^ _mix32(rank))
    row_key = _mix32((torch.where(maskable, tokens, 0).sum(1) & _M32) ^ (seed & _M32))[:, None]

    def uniform(draw: int, at: torch.Tensor | None = None, size=None) -> torch.Tensor:
        at = rank if at is None else at
        key = _mix32(_mix32(row_key ^ (at & _M32)) ^ _mix32(torch.tensor(draw + 1)))
        return key.double() / 2**32

    return uniform


class HFTokenizeMLM(HFTokenize):
    "Tokenize texts once for masked LM, keeping each token's word and whether it is a special token."
    input_type = HFMLMInput

    def key(self, x, where=lambda: "input", labelled=False):
        if not isinstance(x, str):
            key = super().key(x, where, labelled)  # names missing and non-str texts
            raise TypeError(f"{where()}: masked LM takes one text per item, got a text pair {key!r}")
        return x

    def tokenize(self, keys: list) -> list[HFMLMInput]:
        enc = self.hf_tokenizer(list(keys), truncation=self.truncation, max_length=self.max_length,
                                return_attention_mask=True, return_special_tokens_mask=True, **self.tok_kwargs)
        word_ids = [enc.word_ids(j) for j in range(len(keys))] if self.hf_tokenizer.is_fast else None
        out = []
        for j in range(len(keys)):
            item = HFMLMInput({k: torch.tensor(enc[k][j]) for k in enc.keys()})
            if word_ids is not None:
                item["word_ids"] = torch.tensor([-1 if w is None else w for w in word_ids[j]])
            out.append(item)
        return out

    def decodes(self, x: HFMLMInput) -> TitledStr:
        "The text as the model sees it (masks included), special tokens and padding left out."
        ids = x["input_ids"].tolist()
        special = x["special_tokens_mask"].tolist() if "special_tokens_mask" in x else [0] * len(ids)
        tokens = self.hf_tokenizer.convert_ids_to_tokens([i for i, s in zip(ids, special) if not s])
        return TitledStr(self.hf_tokenizer.convert_tokens_to_string(tokens))

    def decodes(self, y: TensorTokenLabels) -> HFMaskedTokens:  # noqa: F811 (plum dispatches on the type)
        "One entry per position: the token to predict there, None where there is none."
        ids = y.tolist()
        tokens = self.hf_tokenizer.convert_ids_to_tokens([i for i in ids if i != IGNORE_INDEX])
        it = iter(tokens)
        return HFMaskedTokens(None if i == IGNORE_INDEX else next(it) for i in ids)


class MaskTokens(ItemTransform):
    """Batch `(x,)` -> `(x with masked input_ids, labels)`: BERT's rule, padding and special tokens never selected.

    Without `seed`, masks are new at every batch (training: new masks every epoch). With `seed`, an item's masks
    depend only on the seed and its ids (not on its batch): validation scores compare across epochs, batch sizes
    and process counts.
    """
    _retain = False

    def __init__(self, mask_token_id: int, vocab_size: int, mlm_probability: float = 0.15, whole_word: bool = False,
                 seed: int | None = None, split_idx: int | None = None):
        super().__init__(split_idx=split_idx)
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
        self.mask_token_id, self.vocab_size, self.mlm_probability = mask_token_id, vocab_size, mlm_probability
        self.whole_word, self.seed = whole_word, seed

    def encodes(self, b):
        x = b[0]
        if not isinstance(x, Mapping) or len(b) > 1:  # not a masked-LM batch, or targets already made
            return b
        ids = x["input_ids"]
        maskable = x["attention_mask"].bool()
        if "special_tokens_mask" in x:
            maskable &= ~x["special_tokens_mask"].bool()
        masked, labels = mask_tokens(ids, maskable, self.mask_token_id, self.vocab_size, self.mlm_probability,
                                     x["word_ids"] if self.whole_word else None, seed=self.seed)
        return (type(x)({**x, "input_ids": masked}), TensorTokenLabels(labels))


class MaskTokensFixed(MaskTokens):
    "`MaskTokens` for validation and inference: an item's masks depend only on `seed` and its ids."
    # a class of its own: fastai's DataBlock keeps one batch transform per class

    def __init__(self, mask_token_id: int, vocab_size: int, mlm_probability: float = 0.15, whole_word: bool = False,
                 seed: int = _VALID_SEED, split_idx: int | None = 1):
        super().__init__(mask_token_id, vocab_size, mlm_probability, whole_word, seed=seed, split_idx=split_idx)


class HFMLMBlock(TransformBlock):
    """The one block of a masked-LM `DataBlock`: raw text in, `(inputs, labels)` batches out, masked on the fly.

    Labels are IGNORE_INDEX (-100) where nothing is to be predicted. `whole_word=True` masks all sub-tokens of a
    word together (needs a fast tokenizer). Example: `DataBlock(blocks=HFMLMBlock(*hf_objects), get_x=ColReader("text"))`
    """

    def __init__(self, hf_arch, hf_config, hf_tokenizer, hf_model, mlm_probability: float = 0.15,
                 whole_word: bool = False, max_length: int | None = None, padding=True, truncation=True,
                 tok_kwargs: dict | None = None):
        if hf_tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token: masked LM needs one (e.g. BERT's [MASK])")
        if whole_word and not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError("whole_word=True needs a fast tokenizer: word_ids() says which sub-tokens form a word")
        limit = model_max_length(hf_config, hf_tokenizer, hf_model)
        self.max_length = limit if max_length is None or (limit is not None and max_length > limit) else max_length
        tokenize = HFTokenizeMLM(hf_tokenizer, max_length=self.max_length, truncation=truncation,
                                 tok_kwargs=tok_kwargs)
        vocab_size = len(hf_tokenizer)
        masking = dict(mask_token_id=hf_tokenizer.mask_token_id, vocab_size=vocab_size,
                       mlm_probability=mlm_probability, whole_word=whole_word)
        batch_tfms = [MaskTokens(**masking, split_idx=0), MaskTokensFixed(**masking)]
        dls_kwargs = dict(pad_values={**tokenizer_pad_values(hf_tokenizer), **PAD_VALUES},
                          padding_side=hf_tokenizer.padding_side,
                          pad_to=self.max_length if padding == "max_length" else None, pad_limit=self.max_length)
        super().__init__(type_tfms=[tokenize], batch_tfms=batch_tfms, dl_type=HFSortedDL, dls_kwargs=dls_kwargs)


def group_texts(texts, hf_tokenizer, max_length: int) -> list[str]:
    """Concatenate `texts` (one corpus, lines joined by newlines) and cut it into chunks of about `max_length` tokens.

    As HF's `run_mlm` groups a corpus of short lines, so that batches hold no padding; the chunks are text (cut at
    word starts where possible, the tail kept) so that they go through a text block like any other text.
    Example: `chunks = group_texts(Path("corpus.txt").read_text().splitlines(), hf_tokenizer, 128)`
    """
    texts = list(texts)
    size = max_length - hf_tokenizer.num_special_tokens_to_add(pair=False)
    if size < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text next to the special tokens")
    if not getattr(hf_tokenizer, "is_fast", False):
        raise ValueError("group_texts needs a fast tokenizer: its offsets say where tokens start in the text")
    line_starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    enc = hf_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    spans = [np.asarray(o, dtype=np.int64).reshape(-1, 2) + s for o, s in zip(enc["offset_mapping"], line_starts)]
    spans = np.concatenate(spans) if spans else np.zeros((0, 2), dtype=np.int64)
    if len(spans) == 0:
        return []
    word_starts = np.flatnonzero(np.r_[True, spans[1:, 0] > spans[:-1, 1]])  # a gap before the token
    corpus, chunks, start = "\n".join(texts), [], 0
    while start < len(spans):
        end = min(start + size, len(spans))
        if end < len(spans):  # cut before the last word start that keeps the chunk non-empty
            k = np.searchsorted(word_starts, end, side="right") - 1
            end = int(word_starts[k]) if k >= 0 and word_starts[k] > start else end
        chunks.append(corpus[spans[start, 0]:spans[end - 1, 1]])
        start = end
    return chunks


class HFMLMDataLoaders(DataLoaders):
    "Factory for masked-LM `DataLoaders` from a DataFrame of texts or a list of lines."

    @classmethod
    def from_df(cls, df: pd.DataFrame, hf_objects_or_checkpoint, text_col="text", valid_col=None,
                valid_pct: float = 0.1, bs: int = 16, max_length: int | None = None, group: bool = False,
                mlm_probability: float = 0.15, whole_word: bool = False, seed: int | None = None, padding=True,
                tok_kwargs=None, **kwargs) -> DataLoaders:
        """`DataLoaders` for masked LM on the texts in `df[text_col]`, validated up front.

        `group=True` concatenates each split's texts and cuts them into `max_length`-token chunks (`group_texts`),
        for a corpus of short lines. `hf_objects_or_checkpoint`: what `get_hf_objects` returns, or a checkpoint
        directory to load with a masked-LM head (the model is then `dls.hf_model`).
        Example: `dls = HFMLMDataLoaders.from_df(df, ckpt_dir, max_length=128, group=True)`
        """
        check_frame(df)
        check_columns(df, [text_col], "text")
        check_texts(df[text_col], df.index, text_col)
        train, valid = split_rows(df, valid_col, valid_pct, seed)
        hf_objects = hf_objects_or_checkpoint
        if not isinstance(hf_objects, tuple):
            hf_objects = get_hf_objects(hf_objects, model_cls=AutoModelForMaskedLM)
        block = HFMLMBlock(*hf_objects, mlm_probability=mlm_probability, whole_word=whole_word,
                           max_length=max_length, padding=padding, tok_kwargs=tok_kwargs)
        texts = df[text_col].tolist()
        if group:
            if block.max_length is None:
                raise ValueError("group=True needs max_length (the model reports no limit)")
            parts = [group_texts([texts[i] for i in rows], hf_objects[2], block.max_length) for rows in (train, valid)]
            texts, valid = parts[0] + parts[1], list(range(len(parts[0]), len(parts[0]) + len(parts[1])))
            if not parts[0]:
                raise ValueError(f"column {text_col!r}: the training texts hold no token to learn from")
        frame = pd.DataFrame({"text": texts})
        dls = DataBlock(blocks=block, get_x=ColReader("text"), splitter=IndexSplitter(valid)).dataloaders(
            frame, bs=bs, **kwargs)
        dls.hf_model = hf_objects[3]
        return dls

    @classmethod
    def from_texts(cls, texts, hf_objects_or_checkpoint, **kwargs) -> DataLoaders:
        "`from_df` on a list of texts (e.g. the lines of a text file); keyword arguments as for `from_df`."
        return cls.from_df(pd.DataFrame({"text": list(texts)}), hf_objects_or_checkpoint, **kwargs)


# loss and metrics: on selected positions only
class MaskedLMLossFlat(TokenCrossEntropyLossFlat):
    "Cross-entropy over the positions selected for prediction; decodes to predicted token ids at every position."

    def decodes(self, x) -> TensorTokenLabels:
        if isinstance(x, (list, L)):  # `get_preds`' rows of batches padded to different lengths
            return L(map(self.decodes, x))
        return TensorTokenLabels(x.argmax(dim=self.axis))


class MaskedLMMetric(Metric):
    "Perplexity (exp of the mean loss per predicted token) or accuracy over the positions selected for prediction."

    def __init__(self, score: str = "perplexity"):
        if score not in ("perplexity", "accuracy"):
            raise ValueError(f"score must be 'perplexity' or 'accuracy', got {score!r}")
        self.score = score
        self.reset()

    def reset(self):
        self.total, self.count = 0.0, 0

    def accumulate(self, learn):
        self.add(learn.pred, learn.yb[0])

    def add(self, pred, targ):
        "Add the loss (or hits) and count of the positions of `targ` (token ids, -100: none) to predict from `pred`."
        targ = targ.reshape(-1)
        pred = pred.reshape(targ.shape[0], -1) if pred.ndim > 2 else pred  # (tokens, vocab)
        keep = targ != IGNORE_INDEX
        pred, targ = pred[keep].float(), targ[keep].as_subclass(torch.Tensor)
        if self.score == "perplexity":
            self.total += float(F.cross_entropy(pred, targ, reduction="sum"))
        else:
            self.total += float((pred.argmax(-1) == targ).sum())
        self.count += int(keep.sum())

    def gather_from_ranks(self):
        "In a distributed validation (blurlite calls it on every rank): the sums over every rank's tokens."
        self.total, self.count = all_reduce_sums(self.total, self.count)

    @property
    def value(self):
        if not self.count:
            return None
        mean = self.total / self.count
        return float(np.exp(mean)) if self.score == "perplexity" else mean

    @property
    def name(self):
        return "perplexity" if self.score == "perplexity" else "masked_accuracy"


mlm_perplexity, masked_accuracy = MaskedLMMetric("perplexity"), MaskedLMMetric("accuracy")


class MaskedLMLogitsCallback(Callback):
    """Compute vocabulary logits only at the positions to predict, not at every position.

    The vocabulary projection (the model's output embeddings) dominates a small encoder's cost; a pre-hook gives it
    only the selected rows, and the targets are selected alike, in training and validation. `get_preds` (hence
    `show_results`) and `use_hf_loss=True` keep full logits. Remove it with `learn.remove_cb(MaskedLMLogitsCallback)`.
    """
    order = -4  # right after HFModelCallback (-5), which puts `labels` in the inputs with use_hf_loss=True

    def __init__(self):
        self.handle = None

    def __getstate__(self):
        return {**self.__dict__, "handle": None}

    def before_batch(self):
        self._remove()
        if not len(self.yb) or "labels" in self.xb[0] or any(isinstance(cb, GatherPredsCallback) for cb in self.cbs):
            return
        head = getattr(self.learn.model, "module", self.learn.model).hf_model.get_output_embeddings()  # DDP wraps
        if head is None:
            return
        keep = self.yb[0] != IGNORE_INDEX
        self.handle = head.register_forward_pre_hook(partial(_select_positions, keep))
        self.learn.yb = (self.yb[0][keep],)

    def after_pred(self):
        self._remove()

    def after_cancel_batch(self):
        self._remove()

    def after_fit(self):
        self._remove()

    def _remove(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def _select_positions(keep: torch.Tensor, module, args):
    "Forward pre-hook: hidden states `(batch, length, dim)` -> the rows at `keep` `(n_selected, dim)`."
    hidden = args[0]
    if hidden.shape[:-1] != keep.shape:
        return None
    return (hidden[keep], *args[1:])


def _default_loss(dls):
    return MaskedLMLossFlat()


def _default_cbs(dls) -> list:
    return [MaskedLMLogitsCallback()]


def _default_metrics(dls) -> list:
    return [MaskedLMMetric("perplexity"), MaskedLMMetric("accuracy")]


def _prepare_model(dls, hf_model) -> None:
    "Check that `hf_model` predicts tokens over the tokenizer's vocabulary."
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(hf_model).__name__} has no language-model head: load it with "
                         "get_hf_objects(..., model_cls=AutoModelForMaskedLM)")
    n_tokens = len(find_hf_transform(dls).hf_tokenizer)
    if head.out_features < n_tokens:
        raise ValueError(f"the model predicts {head.out_features} tokens but the tokenizer has {n_tokens}: "
                         "call hf_model.resize_token_embeddings(len(hf_tokenizer))")


# display: the masked text, the hidden tokens, the predictions at their positions
def _hidden(tokens: HFMaskedTokens, at: HFMaskedTokens | None = None) -> str:
    "Tokens at the positions `at` has one (default: where `tokens` has one), joined for display."
    at = tokens if at is None else at
    return " ".join(str(t) for t, a in zip(tokens, at) if a is not None)


@dispatch
def show_batch(x: HFMLMInput, y, samples, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    rows = [{"masked text": truncate_words(s[0], trunc_at), "hidden tokens": _hidden(s[1])} for s in samples[:max_n]]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def show_results(x: HFMLMInput, y, samples, outs, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    rows = [{"masked text": truncate_words(s[0], trunc_at), "hidden tokens": _hidden(s[1]),
             "predicted": _hidden(o[0], at=s[1])} for s, o in zip(samples[:max_n], outs)]
    display_df(pd.DataFrame(rows))
    return ctxs


# inference
@patch
def fill_mask(self: Learner, text: str | list[str], top_k: int = 5, bs: int = 16):
    """The `top_k` fillings of each mask token in `text`, as `pipeline("fill-mask")` returns them.

    A list of dicts (`score`, `token`, `token_str`, `sequence`) for a text with one mask; a list of such lists,
    one per mask, for several; a list of results for a list of texts, computed `bs` texts at a time, longest first.
    """
    if task_for(self.dls).name != TASK_NAME:
        raise TypeError(f"fill_mask is for masked-LM learners; this learner is for {task_for(self.dls).name}")
    tfm = find_hf_transform(self.dls)
    texts = list(L(text)) if not isinstance(text, str) else [text]
    tokenizer = tfm.hf_tokenizer
    for t in texts:
        if not isinstance(t, str) or tokenizer.mask_token not in t:
            raise ValueError(f"fill_mask needs texts holding the mask token {tokenizer.mask_token!r}, got {t!r}")
    tokenizer_kwargs = {}
    if tfm.max_length:  # truncate as the block did in training: the pipeline's tokenizer limit is the block's
        tokenizer = copy.copy(tokenizer)
        tokenizer.model_max_length = tfm.max_length
        tokenizer_kwargs = {"truncation": True}
    ids = tokenizer(texts, **tokenizer_kwargs)["input_ids"]
    for i, row in enumerate(ids):
        if tokenizer.mask_token_id not in row:
            raise ValueError(f"text {i}: its mask token lies past max_length={tfm.max_length} tokens, where the "
                             "learner truncates; shorten the text before it")
    self.model.eval()
    pipe = FillMaskPipeline(model=plain_model(self.model.hf_model), tokenizer=tokenizer,
                            device=next(self.model.parameters()).device)
    kwargs = {"top_k": top_k, **({"tokenizer_kwargs": tokenizer_kwargs} if tokenizer_kwargs else {})}
    if isinstance(text, str):
        return pipe(text, **kwargs)
    return pipeline_in_length_order(pipe, texts, bs, [len(r) for r in ids], **kwargs)


# saving and the command line
def _settings(dls) -> dict:
    masking = next(t for t in dls.train.after_batch.fs if isinstance(t, MaskTokens))
    return {"mlm_probability": masking.mlm_probability, "whole_word": masking.whole_word}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free masked-LM `DataLoaders` with the saved learner's masking settings."
    block = HFMLMBlock(*hf_objects, mlm_probability=settings["mlm_probability"], whole_word=settings["whole_word"],
                       **block_kwargs)
    dblock = DataBlock(blocks=block, get_x=ColReader("text"), splitter=IndexSplitter([]))
    return dblock.dataloaders(pd.DataFrame({"text": ["x"] * bs}), bs=bs).new_empty()


def _read_lines(path) -> tuple[pd.DataFrame, dict]:
    "A text file, one text per line (blank lines dropped); lines are grouped into `max_length` chunks."
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return pd.DataFrame({"text": [line for line in lines if line.strip()]}), {"group": True}


def _from_df(df, model, text_col="text", label_col=None, valid_col=None, valid_pct=0.1, bs=16, max_length=None,
             seed=None, group=False):
    return HFMLMDataLoaders.from_df(df, model, text_col=text_col or "text", valid_col=valid_col, valid_pct=valid_pct,
                                    bs=bs, max_length=max_length, seed=seed, group=group)


def _predict_json(learn, texts: list) -> list:
    return [learn.fill_mask(t) for t in texts]


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFMLMInput, auto_model=AutoModelForMaskedLM, default_loss=_default_loss,
    default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls, from_df=_from_df,
    predict_json=_predict_json, pipeline="fill-mask", pipeline_kwargs={"tokenizer_kwargs": {"truncation": True}},
    prepare_model=_prepare_model, default_cbs=_default_cbs,
    non_model_keys=NON_MODEL_KEYS, pad_values=PAD_VALUES, columns=("text", None), readers={".txt": _read_lines},
    aliases=("masked-lm", "mlm"), description="masked language modelling on a text column, or a .txt file of lines"))
