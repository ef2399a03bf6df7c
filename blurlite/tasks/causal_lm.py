"""Causal language modelling: texts packed into blocks, next-token loss, perplexity, and generation as
`pipeline("text-generation")` answers.

Texts are tokenized once, each followed by the tokenizer's end-of-text token, and packed into `block_size`-token
blocks (the HF course's `group_texts`, with the last partial block kept); `packing=False` keeps one text per row.
Targets are the inputs (the model's loss shifts them), -100 at padding. `learn.generate(prompts, ...)` runs
transformers' own text-generation pipeline on the learner's model: prompts in batches, padded on the left.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.text.core import TitledStr
from fastai.torch_core import display_df
from fastcore.foundation import L
from fasttransform import ItemTransform
from plum import dispatch
from transformers import AutoModelForCausalLM, TextGenerationPipeline

from ..adapters import plain_model
from ..checks import check_columns, check_frame, check_texts
from ..data import (IGNORE_INDEX, HFSortedDL, HFTextInput, HFTokenize, TensorTokenLabels, find_hf_transform,
                    model_max_length, split_rows, tokenizer_pad_values, truncate_words)
from ..hf_objects import get_hf_objects
from . import HFTask, pipeline_in_length_order, register_task, task_for, texts_and_lines
from .masked_lm import MaskedLMLossFlat, MaskedLMMetric

__all__ = ["HFCausalLMInput", "HFTokenizeCLM", "CausalLMTargets", "HFCausalLMBlock", "HFCausalLMDataLoaders",
           "CausalLMLossFlat", "CausalLMMetric", "causal_perplexity", "next_token_accuracy", "pack_texts",
           "lm_token_ids", "read_texts", "set_pad_token", "generate_text", "train_bpe_tokenizer"]

TASK_NAME = "causal-lm"
DEFAULT_BLOCK_SIZE = 128
TEXT_SPLITS = ("auto", "paragraphs", "lines")  # how `read_texts` cuts a text file into texts


class HFCausalLMInput(HFTextInput):
    "Token ids (and attention mask) of a causal-LM block or text; a batch pads on the right."


def set_pad_token(hf_tokenizer) -> None:
    """Give a tokenizer without a pad token (GPT-2's) its end-of-text token as pad token: the vocabulary stays as it
    is, and padding is masked out (attention mask 0, targets -100)."""
    if hf_tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text (eos) token: causal LM ends every text with it; set one "
                         "first, e.g. hf_tokenizer.eos_token = '<|endoftext|>' (a token of its vocabulary)")
    if hf_tokenizer.pad_token_id is None:
        hf_tokenizer.pad_token = hf_tokenizer.eos_token


def lm_token_ids(texts, hf_tokenizer, **tok_kwargs) -> list[list[int]]:
    """Each text's token ids (with the tokenizer's own special tokens, e.g. Llama's `<s>`), followed by the
    end-of-text token, in one batched tokenizer call."""
    eos = hf_tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text (eos) token: causal LM ends every text with it")
    texts = list(texts)
    if not texts:
        return []
    ids = hf_tokenizer(texts, return_attention_mask=False, **tok_kwargs)["input_ids"]
    return [list(row) if row and row[-1] == eos else [*row, eos] for row in ids]


def pack_texts(texts, hf_tokenizer, block_size: int) -> list[list[int]]:
    """The texts' token ids, each text followed by the end-of-text token, joined and cut into `block_size`-token
    blocks: the HF course's `group_texts`, except that the last, shorter block is kept (no token is dropped).
    Example: `blocks = pack_texts(df.text, hf_tokenizer, 128)`"""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise ValueError(f"block_size must be an int of at least 2 (a token and the next one), got {block_size!r}")
    return [b.tolist() for b in _pack(texts, hf_tokenizer, block_size)]


def _pack(texts, hf_tokenizer, block_size: int) -> list[np.ndarray]:
    "`pack_texts`' blocks as int32 arrays (a tenth of the memory of lists of Python ints)."
    rows = lm_token_ids(texts, hf_tokenizer)
    if not rows:
        return []
    flat = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows])
    return [flat[i:i + block_size] for i in range(0, len(flat), block_size)]


def read_texts(path, split: str = "auto") -> tuple[list[str], str]:
    """The texts of a text file and how it was cut: `"paragraphs"` (blank-line-separated), `"lines"` (one text per
    non-blank line), or `"auto"`: paragraphs when the file has blank lines between texts, else lines."""
    if split not in TEXT_SPLITS:
        raise ValueError(f"split must be one of {TEXT_SPLITS}, got {split!r}")
    text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    lines = text.split("\n")
    if split == "auto":
        blank = [i for i, line in enumerate(lines) if not line.strip()]
        inner = [i for i in blank if any(l.strip() for l in lines[:i]) and any(l.strip() for l in lines[i + 1:])]
        split = "paragraphs" if inner else "lines"
    if split == "lines":
        return [line for line in lines if line.strip()], split
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    return paragraphs, split


def train_bpe_tokenizer(texts, vocab_size: int = 4096, eos_token: str = "<|endoftext|>", min_frequency: int = 2):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts` here, offline (the `tokenizers` library), for a model
    trained from scratch: `eos_token` is its only special token (end of text, also its bos and unk); it has no pad
    token (`set_pad_token` gives it the eos). A `PreTrainedTokenizerFast`: save it with `save_pretrained(dir)`.
    Example: `train_bpe_tokenizer(df.text, vocab_size=2048).save_pretrained("tok")`, then
    `get_hf_objects("tok", model_cls=AutoModelForCausalLM, config=GPT2Config(...), pretrained=False)`"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos_token, eos_token=eos_token, unk_token=eos_token)


def _is_ids(x) -> bool:
    "Whether `x` is a block of token ids (a list, tuple, array or 1-D tensor of ints), not a text."
    if isinstance(x, torch.Tensor):
        return x.ndim == 1 and not x.is_floating_point()
    if isinstance(x, np.ndarray):
        return x.ndim == 1 and np.issubdtype(x.dtype, np.integer)
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, (int, np.integer)) for i in x)


class HFTokenizeCLM(HFTokenize):
    """Tokenize a text once, followed by the end-of-text token (truncated to `max_length`), or take a block of
    token ids (`pack_texts`' blocks) as it is."""
    input_type = HFCausalLMInput

    def key(self, x, where=lambda: "input", labelled=False):
        if _is_ids(x):  # a block of ids: its key is their int32 bytes (compact, hashable)
            ids = np.asarray(x.tolist() if isinstance(x, torch.Tensor) else x, dtype=np.int32)
            if self.max_length and len(ids) > self.max_length:
                raise ValueError(f"{where()}: a block of {len(ids)} token ids is longer than max_length="
                                 f"{self.max_length}: cut blocks of at most that size (pack_texts)")
            if ids.min() < 0 or ids.max() >= len(self.hf_tokenizer):
                raise ValueError(f"{where()}: token id {int(ids.max() if ids.max() >= 0 else ids.min())} is not in "
                                 f"the tokenizer's vocabulary (0 to {len(self.hf_tokenizer) - 1})")
            return ids.tobytes()
        if not isinstance(x, str):
            key = super().key(x, where, labelled)  # names missing and non-str texts
            raise TypeError(f"{where()}: causal LM takes one text (or a block of token ids) per item, got {key!r}")
        if labelled and not x.strip():
            raise ValueError(f"{where()}: the text is empty; drop empty texts, there is nothing to learn from them")
        return x

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_types = (str, list, tuple, L, np.ndarray, torch.Tensor)  # texts and blocks of ids

    def setups(self, items):
        super().setups(items)
        self.pairs = False  # never text pairs (the keys of blocks of ids are bytes)

    def encodes(self, x: str | list | tuple | L | np.ndarray | torch.Tensor) -> HFCausalLMInput:
        key = self.key(x)
        cached = self._cache.get(key)
        return type(cached)(cached) if cached is not None else self.tokenize([key])[0]

    def tokenize(self, keys: list) -> list[HFCausalLMInput]:
        texts = [k for k in keys if isinstance(k, str)]
        rows = lm_token_ids(texts, self.hf_tokenizer, **self.tok_kwargs)
        longer = [i for i, r in enumerate(rows) if self.max_length and len(r) > self.max_length]
        if longer and not self.truncation:
            raise ValueError(f"the text {texts[longer[0]][:60]!r}... has {len(rows[longer[0]])} tokens with its "
                             f"end-of-text token, more than max_length={self.max_length}: with truncation=False, "
                             "shorten it, or pack texts into blocks (pack_texts)")
        if longer:
            warnings.warn(f"{len(longer)} of {len(texts)} texts are longer than max_length={self.max_length} tokens "
                          f"with their end-of-text token and are truncated (the first: {texts[longer[0]][:40]!r}...); "
                          "pack them into blocks instead (packing=True / pack_texts) to keep every token",
                          stacklevel=2)
        tokenized = iter(rows)
        out = []
        for k in keys:
            if isinstance(k, bytes):
                ids = torch.from_numpy(np.frombuffer(k, dtype=np.int32).astype(np.int64))
            else:
                ids = torch.tensor(next(tokenized)[:self.max_length or None], dtype=torch.long)
            out.append(HFCausalLMInput({"input_ids": ids, "attention_mask": torch.ones_like(ids)}))
        return out

    def decodes(self, x: HFCausalLMInput) -> TitledStr:
        "The text as the model reads it, end-of-text tokens included (padding is removed before)."
        return TitledStr(self.hf_tokenizer.decode(x["input_ids"].tolist(), skip_special_tokens=False))

    def decodes(self, y: TensorTokenLabels) -> TitledStr:  # noqa: F811 (plum dispatches on the type)
        "Target or predicted token ids as text (positions without a target left out)."
        return TitledStr(self.hf_tokenizer.decode([i for i in y.tolist() if i != IGNORE_INDEX],
                                                  skip_special_tokens=False))


class CausalLMTargets(ItemTransform):
    "Batch `(x,)` -> `(x, labels)`: the targets are the input ids (the loss shifts them), -100 at padding."
    _retain = False

    def encodes(self, b):
        x = b[0]
        if not isinstance(x, Mapping) or len(b) > 1:  # not a causal-LM batch, or targets already made
            return b
        labels = x["input_ids"].masked_fill(x["attention_mask"] == 0, IGNORE_INDEX)
        return (x, TensorTokenLabels(labels))


class HFCausalLMBlock(TransformBlock):
    """The one block of a causal-LM `DataBlock`: a text (or a block of token ids) in, `(inputs, labels)` batches out.

    A text is tokenized once and followed by the end-of-text token (texts longer than `max_length` are truncated,
    with a warning); a tokenizer without a pad token is given that token as pad token (`set_pad_token`: the
    tokenizer passed in is changed, its vocabulary is not), masked out. Batches pad on the right (position ids count from the first token).
    Example: `DataBlock(blocks=HFCausalLMBlock(*hf_objects, max_length=128), get_x=ColReader("text"))`; for packed
    blocks, items are `pack_texts(texts, hf_tokenizer, block_size)`'s lists of ids.
    """

    def __init__(self, hf_arch, hf_config, hf_tokenizer, hf_model, max_length: int | None = None, padding=True,
                 truncation=True, tok_kwargs: dict | None = None):
        set_pad_token(hf_tokenizer)
        # the model's positions: a saved tokenizer's model_max_length is the block size it was trained with
        limit = _position_limit(hf_config) or model_max_length(hf_config, hf_tokenizer, hf_model)
        self.max_length = limit if max_length is None or (limit is not None and max_length > limit) else max_length
        tokenize = HFTokenizeCLM(hf_tokenizer, max_length=self.max_length, truncation=truncation,
                                 tok_kwargs=tok_kwargs)
        dls_kwargs = dict(pad_values=tokenizer_pad_values(hf_tokenizer), padding_side="right",
                          pad_to=self.max_length if padding == "max_length" else None, pad_limit=self.max_length)
        super().__init__(type_tfms=[tokenize], batch_tfms=[CausalLMTargets()], dl_type=HFSortedDL,
                         dls_kwargs=dls_kwargs)


def _position_limit(hf_config) -> int | None:
    "How many positions the model has (None: not said)."
    return getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)


def check_block_size(block_size, hf_config) -> None:
    "Raise unless `block_size` is an int from 2 to the model's number of positions."
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise ValueError(f"block_size must be an int of at least 2 (a token and the next one), got {block_size!r}")
    limit = _position_limit(hf_config)
    if limit is not None and block_size > limit:
        raise ValueError(f"block_size={block_size} is past the model's {limit} positions: lower block_size to at "
                         f"most {limit}, or build the model with more positions (e.g. n_positions / "
                         "max_position_embeddings in its config)")


class HFCausalLMDataLoaders(DataLoaders):
    "Factory for causal-LM `DataLoaders` from a DataFrame of texts, a list of texts or a text file."

    @classmethod
    def from_df(cls, df: pd.DataFrame, hf_objects_or_checkpoint, text_col="text", block_size: int | None = None,
                valid_col=None, valid_pct: float = 0.1, bs: int = 16, packing: bool = True, seed: int | None = None,
                padding=True, **kwargs) -> DataLoaders:
        """`DataLoaders` for causal LM on the texts in `df[text_col]`, checked up front.

        Rows are split into training and validation texts first; each split's texts, each followed by the
        end-of-text token, are packed into `block_size`-token blocks (`pack_texts`: no token dropped, the last block
        shorter); `block_size` defaults to 128, or the model's positions if fewer. `packing=False` keeps one text
        per row (truncated to `block_size`, with a warning), padded.
        `hf_objects_or_checkpoint`: what `get_hf_objects` returns, or a checkpoint directory loaded with
        `AutoModelForCausalLM` (the model is then `dls.hf_model`); a tokenizer without a pad token is given its
        end-of-text token as one (`set_pad_token`).
        Example: `dls = HFCausalLMDataLoaders.from_df(df, hf_objects, block_size=128, bs=16)`
        """
        if "max_length" in kwargs:
            raise TypeError("causal LM's from_df takes block_size (tokens per block), not max_length")
        if not isinstance(packing, bool):
            raise TypeError(f"packing must be True or False, got {packing!r}")
        check_frame(df)
        check_columns(df, [text_col], "text")
        check_texts(df[text_col], df.index, text_col)
        empty = [i for i, t in zip(df.index, df[text_col]) if not t.strip()]
        if empty:
            raise ValueError(f"column {text_col!r}: row {empty[0]!r} holds an empty text ({len(empty)} rows do): "
                             "drop empty rows, there is nothing to learn from them")
        hf_objects = hf_objects_or_checkpoint
        if not isinstance(hf_objects, tuple):
            hf_objects = get_hf_objects(hf_objects, model_cls=AutoModelForCausalLM)
        set_pad_token(hf_objects[2])
        if block_size is None:
            block_size = min(DEFAULT_BLOCK_SIZE, _position_limit(hf_objects[1]) or DEFAULT_BLOCK_SIZE)
        check_block_size(block_size, hf_objects[1])
        train, valid = split_rows(df, valid_col, valid_pct, seed)
        texts = df[text_col].tolist()
        if packing:
            parts = [_pack([texts[i] for i in rows], hf_objects[2], block_size) for rows in (train, valid)]
            items, valid = parts[0] + parts[1], list(range(len(parts[0]), len(parts[0]) + len(parts[1])))
        else:  # one text per row: truncated to block_size (the tokenizing transform warns)
            items = texts
        block = HFCausalLMBlock(*hf_objects, max_length=block_size, padding=padding)
        frame = pd.DataFrame({"text": items})
        dls = DataBlock(blocks=block, get_x=ColReader("text"), splitter=IndexSplitter(valid)).dataloaders(
            frame, bs=bs, **kwargs)
        dls.hf_model = hf_objects[3]
        return dls

    @classmethod
    def from_texts(cls, texts, hf_objects_or_checkpoint, split: str = "auto", **kwargs) -> DataLoaders:
        """`from_df` on a list of texts, or on the texts of a text file (`read_texts`: blank-line-separated
        paragraphs, or lines; `split` says which, "auto" picks paragraphs when the file has blank lines)."""
        if isinstance(texts, (str, Path)):
            if not Path(texts).is_file():
                raise FileNotFoundError(f"no text file at {str(texts)!r}: pass a list of texts or a file's path")
            texts, _ = read_texts(texts, split)
        return cls.from_df(pd.DataFrame({"text": list(texts)}), hf_objects_or_checkpoint, **kwargs)


# loss and metrics: token i's logits predict token i + 1
def next_token_targets(targ: torch.Tensor) -> torch.Tensor:
    """The target of each position: the next token (-100 after the last), as transformers' causal-LM loss shifts
    labels; shifting the targets, not the logits, spares a copy of the logits."""
    return F.pad(targ[:, 1:], (0, 1), value=IGNORE_INDEX)


class CausalLMLossFlat(MaskedLMLossFlat):
    """The mean cross-entropy of each position's logits against the next token (targets -100 left out): the
    model's own loss with `labels`; decodes to the predicted next token at every position."""

    def __call__(self, inp, targ, **kwargs):
        return super().__call__(inp, next_token_targets(targ), **kwargs)


class CausalLMMetric(MaskedLMMetric):
    """Perplexity (exp of the mean next-token loss over every validation token, not a mean of batch perplexities)
    or next-token accuracy."""

    def accumulate(self, learn):
        self.add(learn.pred, next_token_targets(learn.yb[0]))

    @property
    def name(self):
        return "perplexity" if self.score == "perplexity" else "next_token_accuracy"


causal_perplexity, next_token_accuracy = CausalLMMetric("perplexity"), CausalLMMetric("accuracy")


def _default_loss(dls):
    return CausalLMLossFlat()


def _default_metrics(dls) -> list:
    return [CausalLMMetric("perplexity"), CausalLMMetric("accuracy")]


def _prepare_model(dls, hf_model) -> None:
    "Check that `hf_model` predicts tokens over the tokenizer's vocabulary."
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(hf_model).__name__} has no language-model head: load it with "
                         "get_hf_objects(..., model_cls=AutoModelForCausalLM)")
    n_tokens = len(find_hf_transform(dls).hf_tokenizer)
    if head.out_features < n_tokens:
        raise ValueError(f"the model predicts {head.out_features} tokens but the tokenizer has {n_tokens}: "
                         "call hf_model.resize_token_embeddings(len(hf_tokenizer))")


# display
@dispatch
def show_batch(x: HFCausalLMInput, y, samples, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    display_df(pd.DataFrame([{"text": truncate_words(s[0], trunc_at)} for s in samples[:max_n]]))
    return ctxs


@dispatch
def show_results(x: HFCausalLMInput, y, samples, outs, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    "The text and, under it, the model's greedy guess of each next token (teacher-forced)."
    rows = [{"text": truncate_words(s[0], trunc_at), "predicted next tokens": truncate_words(o[0], trunc_at)}
            for s, o in zip(samples[:max_n], outs)]
    display_df(pd.DataFrame(rows))
    return ctxs


# generation
def generate_text(learn, prompts, max_new_tokens: int = 50, do_sample: bool = False, num_beams: int = 1,
                  temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0, num_return_sequences: int = 1,
                  bs: int = 16, **generate_kwargs):
    """Continue `prompts` as `pipeline("text-generation")` does: `[{"generated_text": prompt + continuation}, ...]`
    (`num_return_sequences` of them) for one prompt, a list of such lists for a list of prompts.

    It runs transformers' `TextGenerationPipeline` on the learner's model, so that it answers exactly as the
    pipeline on the saved artifact given the same settings. Prompts go `bs` at a time, longest first, padded on the
    left. Sampling (`do_sample=True`) draws from torch's generator: `set_seed(n)` first makes it reproducible.
    Other `generate` arguments (e.g. `repetition_penalty`) pass through.
    """
    if task_for(learn.dls).generate is not generate_text:
        raise TypeError(f"this generate is for causal-LM learners; this learner is for {task_for(learn.dls).name}")
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"prompt {bad}: expected a str, got {type(prompts[bad]).__name__} {prompts[bad]!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    tokenizer = copy.copy(find_hf_transform(learn.dls).hf_tokenizer)  # the pipeline sets the padding side
    tokenizer.padding_side = "left"
    hf_model = plain_model(getattr(learn.model, "module", learn.model).hf_model)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    limit = _position_limit(hf_model.config)
    too_long = next((i for i, n in enumerate(lengths) if limit and n + max_new_tokens > limit), None)
    if too_long is not None:
        raise ValueError(f"prompt {too_long} has {lengths[too_long]} tokens: with max_new_tokens={max_new_tokens} "
                         f"that is past the model's {limit} positions; shorten it or lower max_new_tokens")
    training = learn.model.training
    learn.model.eval()
    pipe = TextGenerationPipeline(model=hf_model, tokenizer=tokenizer, device=next(hf_model.parameters()).device)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=num_beams, temperature=temperature,
                  top_k=top_k, top_p=top_p, num_return_sequences=num_return_sequences, **generate_kwargs)
    try:
        with warnings.catch_warnings():  # sampling settings given with do_sample=False: the pipeline's call, as given
            warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
            if single:
                return pipe(prompts[0], **kwargs)
            return pipeline_in_length_order(pipe, prompts, bs, lengths, **kwargs)
    finally:
        learn.model.train(training)  # called during training (a callback), dropout stays on


def _predict_result(learn, item, res: tuple) -> tuple:
    "`learn.predict(prompt)`: the generated text (greedy, 50 new tokens) first, then fastai's own outputs."
    return (generate_text(learn, item)[0]["generated_text"], *res[1:])


# saving and the command line
def _settings(dls) -> dict:
    return {"block_size": find_hf_transform(dls).max_length}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free causal-LM `DataLoaders` with the saved learner's block settings."
    block = HFCausalLMBlock(*hf_objects, **block_kwargs)
    dblock = DataBlock(blocks=block, get_x=ColReader("text"), splitter=IndexSplitter([]))
    return dblock.dataloaders(pd.DataFrame({"text": ["x"] * bs}), bs=bs).new_empty()


def _read_text_file(path) -> tuple[pd.DataFrame, dict]:
    "A .txt file: one text per blank-line-separated paragraph when it has blank lines, else one per line."
    import os
    import sys

    texts, split = read_texts(path)
    if os.environ.get("RANK", "0") == "0":
        how = "blank-line-separated paragraph" if split == "paragraphs" else "line"
        print(f"{path}: {len(texts)} texts, one per {how}", file=sys.stderr, flush=True)
    return pd.DataFrame({"text": texts}), {}


def _from_df(df, model, text_col="text", label_col=None, valid_col=None, valid_pct=0.1, bs=16, max_length=None,
             seed=None, block_size=None):
    "The command line's `from_df`: `--block-size` (else `--max-length`, else `from_df`'s default) tokens per block."
    block_size = block_size if block_size is not None else max_length
    return HFCausalLMDataLoaders.from_df(df, model, text_col=text_col or "text", block_size=block_size,
                                         valid_col=valid_col, valid_pct=valid_pct, bs=bs, seed=seed)


def _predict_inputs(texts: list, options: dict, file) -> list:
    "Prompts from the command line and `--file` (one per line), each with its `--max-new-tokens`."
    values = options.get("--max-new-tokens", [])
    prompts = texts_and_lines(texts, {}, file)
    if not values:
        return prompts
    if len(values) > 1:
        raise ValueError("give --max-new-tokens once")
    try:
        n = int(values[-1])
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--max-new-tokens must be a positive int, got {values[-1]!r}")
    return [{"text": p, "max_new_tokens": n} for p in prompts]


def _predict_json(learn, inputs: list) -> list:
    "One `[{\"generated_text\": ...}]` per prompt (a str, or a dict with `text` and `max_new_tokens`)."
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(x.get("max_new_tokens", 50) if isinstance(x, Mapping) else 50, []).append(i)
    out = [None] * len(inputs)
    for n, idxs in groups.items():
        prompts = [inputs[i]["text"] if isinstance(inputs[i], Mapping) else inputs[i] for i in idxs]
        for i, result in zip(idxs, generate_text(learn, prompts, max_new_tokens=n)):
            out[i] = result
    return out


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFCausalLMInput, auto_model=AutoModelForCausalLM, default_loss=_default_loss,
    default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls, from_df=_from_df,
    predict_json=_predict_json, pipeline="text-generation", prepare_model=_prepare_model,
    predict_result=_predict_result, columns=("text", None), readers={".txt": _read_text_file}, aliases=("clm",),
    description="causal language modelling (GPT-style) on a text column, or a .txt file of paragraphs or lines",
    peft_task_type="CAUSAL_LM", adapter_head=False, generate=generate_text,
    predict_options={"--max-new-tokens": "tokens to generate after each prompt (default 50)"},
    predict_inputs=_predict_inputs))
