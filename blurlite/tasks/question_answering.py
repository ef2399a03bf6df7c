"""Extractive question answering: SQuAD data, windows over long contexts, span search, SQuAD metrics, `answer`.

Each question is a document whose windows are its context cut as the HF course and transformers' question-answering
pipeline cut it (question + context, `truncation="only_second"`, `stride` tokens shared). Training items are windows,
labelled with the answer's first and last token, or the first token where the window misses the answer. Validation,
`get_preds` and predictions are per question: `HFTask.combine_windows` searches the spans of its windows as the
pipeline did (`select_starts_ends`, word alignment, answers merged by text) and gives one row per question.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.metrics import Metric
from fastai.torch_core import TensorBase, display_df, to_device
from fastcore.foundation import L
from fastcore.basics import patch
from fasttransform import ItemTransform, Transform
from plum import dispatch
from transformers import AutoModelForQuestionAnswering

from ..adapters import plain_model
from ..checks import describe_item
from ..data import (DOC_IDS, IGNORE_INDEX, HFTextInput, HFTokenize, HFWindowedDL, find_hf_transform, is_document,
                    model_max_length, split_rows, tokenizer_pad_values)
from ..hf_objects import get_hf_objects
from ..ranks import all_reduce_sums
from . import HFTask, register_task, task_for
from .squad import (check_qa_frame, normalize_answer, parse_answers, search_answers, squad_answer_scores,
                    squad_to_df)

__all__ = ["HFQAInput", "HFQATokenize", "HFQABlock", "QAnswersBlock", "QAnswers", "QAWindowLabels", "HFQADataLoaders",
           "QALossFlat", "QAMetric", "squad_exact_match", "squad_f1", "QAText", "QAnswerText", "QAReferences",
           "TensorQASpans", "TensorQAPositions", "TensorQATargets", "TensorQAPrediction", "qa_windows",
           "search_windows"]

TASK_NAME = "question-answering"
# per-token keys the span search reads (not model inputs): which sequence a token is of (-1: special), its characters
# in its text, and the characters of its whole word (-1 where the tokenizer has no word for it); and the context
NON_MODEL_KEYS = frozenset({"sequence_ids", "offset_start", "offset_end", "word_start", "word_end", "context_chars"})
PAD_VALUES = {"sequence_ids": -1, "offset_start": 0, "offset_end": 0, "word_start": -1, "word_end": -1,
              "context_chars": -1}
LOSS, SCORE, START, END = range(4)  # the columns of a question's row after the span search


class HFQAInput(HFTextInput):
    "A question with its context, tokenized: one window (1-D tensors) or all its windows (lists of 1-D tensors)."
    non_token_keys = frozenset({"context_chars"})  # the context's characters, whatever the number of tokens


class QAText(NamedTuple):
    "A decoded question: its text, its context, and the characters `[first, last)` of the context its window holds."
    question: str
    context: str
    first: int = 0
    last: int = -1


class QAnswerText(str):
    "An answer: its text, and where it lies in the context (`start`, `end`: characters), with a `score` if predicted."

    def __new__(cls, text: str, start: int = 0, end: int = 0, score: float | None = None):
        self = super().__new__(cls, text)
        self.start, self.end, self.score = int(start), int(end), score
        return self

    def __reduce__(self):
        return (QAnswerText, (str(self), self.start, self.end, self.score))


class QAReferences(str):
    """The reference answers of a question: their texts joined by " | " (a str, so that fastai's decoding keeps it
    whole), each `QAnswerText` in `answers`; none: the question has no answer (SQuAD v2)."""

    def __new__(cls, answers=()):
        answers = tuple(answers)
        self = super().__new__(cls, " | ".join(answers))
        self.answers = answers
        return self

    def __reduce__(self):
        return (QAReferences, (self.answers,))


class TensorQASpans(TensorBase):
    "Reference answers as character spans of the context, `[start0, end0, start1, end1, ...]` (empty: no answer)."
    pad_value = IGNORE_INDEX


class TensorQAPositions(TensorBase):
    "A window's label: the tokens where its answer starts and ends; `[0, 0]` (the first token) where it has none."


# fastai casts what it decodes to the target type its training loader recorded (window labels): question targets
# and predictions subclass it, so that they keep their own type
class TensorQATargets(TensorQAPositions):
    "A question's targets: `[n_windows, start_0, end_0, ..., start_n-1, end_n-1, *reference spans]`."
    pad_value = IGNORE_INDEX


class TensorQAPrediction(TensorQATargets):
    "A question's prediction after the span search: `[loss, score, start, end]` (characters of the context)."


def _chars(text: str) -> torch.Tensor:
    "The code points of `text` (a tensor: batches carry the context, so answers come out exactly as written)."
    return torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int32))


def _text(chars: torch.Tensor) -> str:
    "The text of code points `chars` (padding, negative, dropped)."
    values = chars[chars >= 0].cpu().numpy().astype(np.uint32)
    return values.tobytes().decode("utf-32-le")


# ------------------------------------------------------------------------------------------------------------ data
def _word_spans(words: np.ndarray, seq: np.ndarray, starts: np.ndarray, ends: np.ndarray, context_seq: int):
    """Per token, the characters of its word as the pipeline aligned answers to words (`Encoding.word_to_chars(
    token_to_word(t), context)`: the first and last token of that word in the context of this window); -1 where
    that lookup fails (special tokens, words the window's context does not hold)."""
    in_context = np.flatnonzero((seq == context_seq) & (words >= 0))
    word_start = np.full(len(words), -1, dtype=np.int64)
    word_end = np.full(len(words), -1, dtype=np.int64)
    if not len(in_context):
        return word_start, word_end
    size = int(words.max()) + 1
    first, last = np.full(size, np.iinfo(np.int64).max), np.full(size, -1, dtype=np.int64)
    ctx_words = words[in_context]
    np.minimum.at(first, ctx_words, starts[in_context])  # offsets grow along the text: the first token's start
    np.maximum.at(last, ctx_words, ends[in_context])  # and the last token's end
    first[first == np.iinfo(np.int64).max] = -1
    known = words >= 0
    word_start[known], word_end[known] = first[words[known]], last[words[known]]
    return word_start, word_end


def qa_windows(hf_tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int,
               tok_kwargs: dict | None = None) -> list[HFQAInput]:
    """Each (question, context) tokenized as transformers' question-answering pipeline does, one `HFQAInput` of
    windows each: `truncation="only_second"` (context first, "only_first", for tokenizers that pad on the left),
    `max_length` tokens a window, `stride` tokens shared by neighbours, with offsets and word spans for the search."""
    question_first = hf_tokenizer.padding_side == "right"
    enc = hf_tokenizer(questions if question_first else contexts, contexts if question_first else questions,
                       truncation="only_second" if question_first else "only_first", max_length=max_length,
                       stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                       return_attention_mask=True, **(tok_kwargs or {}))
    context_seq = 1 if question_first else 0
    chars = [_chars(c) for c in contexts]
    docs = [HFQAInput({k: [] for k in ("input_ids", "attention_mask", *(["token_type_ids"] if "token_type_ids" in enc
                                                                        else []), *sorted(NON_MODEL_KEYS))})
            for _ in questions]
    for w, d in enumerate(enc["overflow_to_sample_mapping"]):
        doc = docs[d]
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in doc:
                doc[key].append(torch.tensor(enc[key][w]))
        offsets = np.asarray(enc["offset_mapping"][w], dtype=np.int64).reshape(-1, 2)
        seq = np.array([-1 if s is None else s for s in enc.sequence_ids(w)], dtype=np.int64)
        words = np.array([-1 if x is None else x for x in enc.word_ids(w)], dtype=np.int64)
        word_start, word_end = _word_spans(words, seq, offsets[:, 0], offsets[:, 1], context_seq)
        if not question_first:  # stored as question 0, context 1, whichever the tokenizer puts first
            seq = np.where(seq >= 0, 1 - seq, -1)
        for key, values in (("sequence_ids", seq), ("offset_start", offsets[:, 0]), ("offset_end", offsets[:, 1]),
                            ("word_start", word_start), ("word_end", word_end)):
            doc[key].append(torch.from_numpy(values.astype(np.int32)))
        doc["context_chars"].append(chars[d])
    return docs


class HFQATokenize(HFTokenize):
    "Tokenize each `(question, context)` once, into the windows the question-answering pipeline makes."
    input_type = HFQAInput
    long_texts = "windows"  # every question is a document of windows
    window_agg = "search"  # its windows are combined by the span search (`HFTask.combine_windows`), not averaged

    def __init__(self, hf_tokenizer, max_length: int, stride: int, max_answer_len: int = 15,
                 handle_impossible_answer: bool = False, tok_kwargs: dict | None = None):
        super().__init__(hf_tokenizer, max_length=max_length, tok_kwargs=tok_kwargs)
        self.stride, self.max_answer_len = stride, max_answer_len
        self.handle_impossible_answer = handle_impossible_answer
        self.pairs = True
        self.input_types = (list, tuple, L, dict)  # `predict((question, context))`, or the pipeline's dict

    def key(self, x, where=lambda: "input", labelled=False):
        if isinstance(x, Mapping) and {"question", "context"} <= set(x):
            x = (x["question"], x["context"])
        if not (isinstance(x, (tuple, list, L)) and len(x) == 2):
            raise TypeError(f"{where()}: expected a (question, context) pair, got {type(x).__name__} {x!r}")
        for name, text in zip(("question", "context"), x):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where()}: the {name} must be a non-empty str, got {text!r}")
        return (x[0], x[1])

    def setups(self, items):
        try:
            super().setups(items)
        except Exception as e:  # tokenizers raises a bare Exception when a question leaves no room for its context
            if isinstance(e, (ValueError, TypeError)) and "truncat" not in str(e).lower():
                raise
            for i in range(len(items)):
                try:
                    self.tokenize([self.key(items[i])])
                except Exception:  # noqa: BLE001  the first row that fails is named
                    raise ValueError(f"{describe_item(items, i)}: {self._too_long(e)}") from e
            raise

    def encodes(self, x: dict):  # noqa: F811 (plum dispatches on the type)
        "The pipeline's `{'question': ..., 'context': ...}` (an item already tokenized passes)."
        return x if isinstance(x, HFTextInput) else HFTokenize.encodes(self, self.key(x))

    def _too_long(self, error) -> str:
        return (f"the question leaves no room for its context in windows of max_length={self.max_length} tokens "
                f"sharing stride={self.stride}: shorten the question, raise max_length or lower stride ({error})")

    def tokenize(self, keys: list, max_length: int | None = None, stride: int | None = None) -> list[HFQAInput]:
        "One `HFQAInput` of windows per `(question, context)` key (`max_length`, `stride`: the block's by default)."
        if not keys:
            return []
        return qa_windows(self.hf_tokenizer, [k[0] for k in keys], [k[1] for k in keys],
                          max_length or self.max_length, self.stride if stride is None else stride, self.tok_kwargs)

    def decodes(self, x: HFQAInput) -> QAText:
        "The question (decoded from its tokens), the context (exactly) and the part of it the window holds."
        windows = [x] if not is_document(x) else [dict(zip(x, w)) for w in zip(*x.values())]
        first = windows[0]
        seq, ids = first["sequence_ids"], first["input_ids"]
        question = self.hf_tokenizer.decode(ids[seq == 0].tolist(), skip_special_tokens=True)
        context = _text(first["context_chars"])
        in_context = [w["offset_end"][w["sequence_ids"] == 1] for w in windows]
        starts = [w["offset_start"][w["sequence_ids"] == 1] for w in windows]
        lo = min((int(s.min()) for s in starts if len(s)), default=0)
        hi = max((int(e.max()) for e in in_context if len(e)), default=len(context))
        return QAText(question, context, lo, hi)


def _stride(max_length: int, stride: int | None, hf_tokenizer) -> int:
    "The checked stride: the pipeline's default min(max_length // 2, 128); less than the room for context."
    stride = min(max_length // 2, 128) if stride is None else stride
    room = max_length - hf_tokenizer.num_special_tokens_to_add(pair=True)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < room:
        raise ValueError(f"stride must be an int from 0 to {room - 1} (context tokens shared by neighbouring windows "
                         f"of max_length={max_length}), got {stride!r}")
    return stride


class HFQABlock(TransformBlock):
    """A `TransformBlock` for `(question, context)` pairs: every question becomes its windows (see `HFWindowedDL`).

    `max_length` (default 384, at most the model's), `stride` (default min(max_length // 2, 128)): the windows, as
    the question-answering pipeline's `max_seq_len`/`doc_stride`. `max_answer_len` and `handle_impossible_answer`:
    the span search of validation and predictions. Targets: `QAnswersBlock`.
    Example: `DataBlock(blocks=(HFQABlock(*hf_objects), QAnswersBlock), get_x=ColReader(["question", "context"]),
    get_y=ColReader("answers"), n_inp=1)`
    """

    def __init__(self, hf_arch, hf_config, hf_tokenizer, hf_model, max_length: int | None = 384,
                 stride: int | None = None, max_answer_len: int = 15, handle_impossible_answer: bool = False,
                 tok_kwargs: dict | None = None, padding=True, truncation=True):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ValueError("question answering needs a fast tokenizer (offsets, windows): load it with "
                             "get_hf_objects(...) / AutoTokenizer.from_pretrained(..., use_fast=True)")
        limit = model_max_length(hf_config, hf_tokenizer, hf_model)
        if max_length is None or (limit is not None and max_length > limit):
            max_length = limit or 384
        if truncation is not True:  # `block_settings` records it; windows are how QA truncates
            raise ValueError(f"question answering cuts long contexts into windows: leave truncation=True (got "
                             f"{truncation!r})")
        if isinstance(max_answer_len, bool) or not isinstance(max_answer_len, int) or max_answer_len < 1:
            raise ValueError(f"max_answer_len must be an int of at least 1, got {max_answer_len!r}")
        tokenize = HFQATokenize(hf_tokenizer, max_length, _stride(max_length, stride, hf_tokenizer), max_answer_len,
                                bool(handle_impossible_answer), tok_kwargs)
        self.max_length = max_length
        # batches pad on the right whatever the tokenizer does: a window's tokens keep their positions (its labels,
        # and for rotary or learned positions its logits), as the pipeline ran each window unpadded
        dls_kwargs = dict(pad_values={**tokenizer_pad_values(hf_tokenizer), **PAD_VALUES}, padding_side="right",
                          pad_limit=max_length,
                          pad_to=max_length if padding == "max_length" else None, window_agg="search")
        super().__init__(type_tfms=[tokenize], dl_type=HFWindowedDL, dls_kwargs=dls_kwargs)


class QAnswers(Transform):
    "SQuAD answers (`{'text': [...], 'answer_start': [...]}`, or its JSON) as character spans of the context."

    def encodes(self, answers: dict | str) -> TensorQASpans:
        parsed = parse_answers(answers)
        spans = [v for t, s in zip(parsed["text"], parsed["answer_start"]) for v in (s, s + len(t))]
        return TensorQASpans(torch.tensor(spans, dtype=torch.long))


def _window_label(x: Mapping, spans: torch.Tensor) -> list[int]:
    """The tokens `[start, end]` of the first reference answer in window `x` (as the HF course labels), or `[0, 0]`
    (the first token) when the window misses it or the question has none."""
    if len(spans) < 2:
        return [0, 0]
    start_char, end_char = int(spans[0]), int(spans[1])
    seq = x["sequence_ids"]
    context_seq = 1  # `qa_windows` numbers the context 1, whichever comes first
    ctx = torch.nonzero(seq == context_seq).flatten()
    if not len(ctx):
        return [0, 0]
    starts, ends = x["offset_start"][ctx], x["offset_end"][ctx]
    if int(starts[0]) > start_char or int(ends[-1]) < end_char:
        return [0, 0]
    start = int(ctx[int((starts <= start_char).sum()) - 1])
    end = int(ctx[int((ends < end_char).sum())])
    return [start, end]


class QAWindowLabels(ItemTransform):
    """Label each window with its answer's tokens (training windows: `TensorQAPositions`); give a question its
    windows' labels and its reference spans (`TensorQATargets`). Decodes labels and predictions to answer texts."""
    order = 5

    def encodes(self, xy):
        if not isinstance(xy, (tuple, list)) or len(xy) < 2:  # no targets (`test_dl`, `predict`)
            return xy
        x, spans = xy[0], xy[1]
        if not isinstance(x, HFQAInput) or not isinstance(spans, TensorQASpans):
            return xy
        if not is_document(x):
            return (x, TensorQAPositions(torch.tensor(_window_label(x, spans))), *xy[2:])
        windows = [dict(zip(x, w)) for w in zip(*x.values())]
        labels = [v for w in windows for v in _window_label(w, spans)]
        return (x, TensorQATargets(torch.tensor([len(windows), *labels, *spans.tolist()], dtype=torch.long)), *xy[2:])

    def decodes(self, xy):
        if not isinstance(xy, (tuple, list)) or len(xy) < 2:
            return xy
        x, y = xy[0], xy[1]
        if not isinstance(x, Mapping) or "context_chars" not in x:
            return xy
        first = {k: v[0] for k, v in x.items()} if is_document(x) else x
        context = _text(first["context_chars"])
        return (x, _decoded_answer(y, first, context), *xy[2:])


def _decoded_answer(y, window: Mapping, context: str):
    "A target or prediction as text: references (`QAReferences`) or one answer (`QAnswerText`)."
    if isinstance(y, TensorQAPrediction):
        start, end = int(y[START]), int(y[END])
        return QAnswerText(context[start:end], start, end, float(y[SCORE]))
    if isinstance(y, (TensorQATargets, TensorQASpans)):
        spans = _reference_spans(y)
        return QAReferences(QAnswerText(context[s:e], s, e) for s, e in spans)
    if isinstance(y, TensorQAPositions):
        s, e = int(y[0]), int(y[1])
        if s == 0 and e == 0:
            return QAnswerText("")
        if max(s, e) >= len(window["offset_start"]):  # a prediction at a padding position
            return QAnswerText("")
        start, end = int(window["offset_start"][s]), int(window["offset_end"][e])
        return QAnswerText(context[start:end], start, end)
    return y


def _reference_spans(y: torch.Tensor) -> list[tuple[int, int]]:
    "The reference spans of a question's targets (`TensorQATargets`, or bare `TensorQASpans`)."
    values = [int(v) for v in y if int(v) != IGNORE_INDEX]
    if isinstance(y, TensorQATargets):
        values = values[1 + 2 * values[0]:] if values else []
    return list(zip(values[0::2], values[1::2]))


def QAnswersBlock() -> TransformBlock:
    "The target block of question answering: SQuAD answers in; window labels and reference spans out."
    return TransformBlock(type_tfms=[QAnswers()], item_tfms=[QAWindowLabels()])


class HFQADataLoaders(DataLoaders):
    "Factory for extractive question-answering `DataLoaders` (one row per question), as fastai's `from_df`."

    @classmethod
    def from_df(cls, df: pd.DataFrame, hf_objects_or_checkpoint, question_col="question", context_col="context",
                answers_col="answers", valid_col=None, valid_pct: float = 0.2, bs: int = 16,
                max_length: int | None = 384, stride: int | None = None, max_answer_len: int = 15,
                handle_impossible_answer: bool | None = None, seed: int | None = None, tok_kwargs=None,
                **kwargs) -> DataLoaders:
        """`DataLoaders` of questions from `df` (e.g. `squad_to_df(path)`), checked up front (errors name the row).

        Rows are split into training and validation (by question, never by window); a context longer than a window
        becomes overlapping windows (`max_length`, `stride`). Training windows are items, labelled with their answer's
        tokens; validation is per question. `handle_impossible_answer` (default: True when some question has no
        answer, SQuAD v2) lets the span search answer "" (no answer). `hf_objects_or_checkpoint`: what
        `get_hf_objects(..., model_cls=AutoModelForQuestionAnswering)` returns, or a checkpoint (then `dls.hf_model`).
        Example: `dls = HFQADataLoaders.from_df(squad_to_df("train.json"), ckpt_dir, max_length=256)`
        """
        answers = check_qa_frame(df, question_col, context_col, answers_col)
        if handle_impossible_answer is None:
            handle_impossible_answer = any(not a["text"] for a in answers)
        train, valid = split_rows(df, valid_col, valid_pct, seed)
        hf_objects = hf_objects_or_checkpoint
        if not isinstance(hf_objects, tuple):
            hf_objects = get_hf_objects(hf_objects, model_cls=AutoModelForQuestionAnswering)
        frame = pd.DataFrame({"question": df[question_col].to_numpy(), "context": df[context_col].to_numpy(),
                              "answers": answers}, index=df.index)  # errors name the caller's rows
        dblock = DataBlock(blocks=(HFQABlock(*hf_objects, max_length=max_length, stride=stride,
                                             max_answer_len=max_answer_len,
                                             handle_impossible_answer=handle_impossible_answer, tok_kwargs=tok_kwargs),
                                   QAnswersBlock),
                           get_x=ColReader(["question", "context"]), get_y=ColReader("answers"),
                           splitter=IndexSplitter(valid), n_inp=1)
        dls = dblock.dataloaders(frame, bs=bs, **kwargs)
        dls.hf_model = hf_objects[3]
        return dls


# ------------------------------------------------------------------------------------------------------ the search
def _numpy_windows(x: Mapping, start: torch.Tensor, end: torch.Tensor) -> list[dict]:
    "The windows of a padded batch `x` with their logits, unpadded, as numpy arrays (one dict per window)."
    keep = x["attention_mask"].bool().cpu().numpy()
    arrays = {k: x[k].cpu().numpy() for k in ("input_ids", "sequence_ids", "offset_start", "offset_end",
                                              "word_start", "word_end")}
    # as the pipeline: bf16 logits become float32 (numpy has no bf16); fp16 and float32 ones stay as they are
    arrays["start"], arrays["end"] = (t.float().cpu().numpy() if t.dtype == torch.bfloat16 else t.cpu().numpy()
                                      for t in (start, end))
    return [{k: v[i][keep[i]] for k, v in arrays.items()} for i in range(len(keep))]


def _batch_contexts(x: Mapping, doc_ids: torch.Tensor) -> list[str]:
    "The context of each question of a batch of windows (from its first window)."
    ids = doc_ids.tolist()
    firsts = [ids.index(d) for d in range(max(ids) + 1)] if ids else []
    return [_text(x["context_chars"][i]) for i in firsts]


def _window_losses(pred: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    "Each window's loss: the mean of the start and end cross-entropies, as the model's own loss (over its batch)."
    pred = pred.float()
    start = F.cross_entropy(pred[..., 0], positions[:, 0], reduction="none")
    return (start + F.cross_entropy(pred[..., 1], positions[:, 1], reduction="none")) / 2


def _question_positions(targets: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    "Each window's label `[start, end]` from its question's `TensorQATargets` (its windows' labels, in order)."
    counts = torch.bincount(doc_ids)
    rank = torch.arange(len(doc_ids), device=doc_ids.device) - (torch.cumsum(counts, 0) - counts)[doc_ids]
    rows = targets[doc_ids]
    return torch.stack([rows.gather(1, (1 + 2 * rank)[:, None]), rows.gather(1, (2 + 2 * rank)[:, None])], 1)[..., 0]


def search_windows(learn, pred: torch.Tensor) -> torch.Tensor:
    """`HFTask.combine_windows` of question answering: one row per question of a batch of windows, `[loss, score,
    start, end]`: the span search's best answer (characters of the context; 0, 0: no answer) and the mean loss of
    the question's windows (0 without targets)."""
    x = learn.xb[0]
    doc_ids = x[DOC_IDS].long()
    tfm = find_hf_transform(learn.dls)
    tokenizer = tfm.hf_tokenizer
    contexts = _batch_contexts(x, doc_ids)
    best = search_answers(_numpy_windows(x, pred[..., 0], pred[..., 1]), contexts, doc_ids.tolist(), 1,
                          tfm.max_answer_len, tfm.handle_impossible_answer, True,
                          tokenizer.padding_side == "right", tokenizer.cls_token_id)
    rows = torch.zeros(len(contexts), 4, dtype=torch.float32)
    for d, answers in enumerate(best):
        if answers:
            rows[d, SCORE], rows[d, START], rows[d, END] = answers[0]["score"], answers[0]["start"], answers[0]["end"]
    rows = rows.to(pred.device)
    if len(learn.yb):  # a question's targets: its windows' labels, then its reference spans (`TensorQATargets`)
        losses = _window_losses(pred, _question_positions(learn.yb[0].as_subclass(torch.Tensor), doc_ids))
        total = losses.new_zeros(len(contexts)).index_add(0, doc_ids.to(losses.device), losses)
        rows[:, LOSS] = total / torch.bincount(doc_ids, minlength=len(contexts)).to(total)
    return TensorQAPrediction(rows)


def start_end_logits(outputs) -> torch.Tensor:
    "fastai's `pred` of a question-answering model: its start and end logits, stacked `(windows, tokens, 2)`."
    return torch.stack([outputs["start_logits"], outputs["end_logits"]], dim=-1)


def positions_as_labels(yb: tuple) -> dict:
    "The model's own loss needs `start_positions`/`end_positions`: training windows have them; questions do not."
    y = yb[0] if yb else None
    if y is None or y.ndim != 2 or y.shape[1] != 2:  # a question's targets (at least 3 values), not a window's
        return {}
    y = y.as_subclass(torch.Tensor)
    return {"start_positions": y[:, 0], "end_positions": y[:, 1]}


# --------------------------------------------------------------------------------------------- loss and metrics
class QALossFlat:
    """Training windows: the mean of the start and end cross-entropies (the model's own loss). Questions (after the
    span search): the mean loss of each question's windows, which the search recorded. Decodes to answers."""

    def __init__(self, reduction: str = "mean"):
        self.reduction = reduction

    def __call__(self, pred, targ, **kwargs):
        reduction = kwargs.get("reduction", self.reduction)
        if isinstance(pred, TensorQAPrediction) or pred.ndim == 2:
            loss = pred[:, LOSS].as_subclass(torch.Tensor)
        else:
            loss = _window_losses(pred.as_subclass(torch.Tensor), targ.as_subclass(torch.Tensor))
        return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss

    def activation(self, x):
        return x

    def decodes(self, x):
        if x.ndim == 2:  # a question's row: its answer
            return TensorQAPrediction(x)
        return TensorQAPositions(x.argmax(dim=1))  # a window's most likely start and end tokens


class QAMetric(Metric):
    "SQuAD exact match or F1 (0 to 1) per question, over its reference answers; exact over several processes."

    def __init__(self, score: str = "f1"):
        if score not in ("exact_match", "f1"):
            raise ValueError(f"score must be 'exact_match' or 'f1', got {score!r}")
        self.score = score
        self.reset()

    def reset(self):
        self.total, self.count = 0.0, 0

    def accumulate(self, learn):
        pred, targets, x = learn.pred, learn.yb[0], learn.xb[0]
        contexts = _batch_contexts(x, x[DOC_IDS].long())
        for d, context in enumerate(contexts):
            predicted = context[int(pred[d, START]):int(pred[d, END])]
            references = [context[s:e] for s, e in _reference_spans(targets[d].as_subclass(TensorQATargets))]
            em, f1 = squad_answer_scores(predicted, references)
            self.total += em if self.score == "exact_match" else f1
        self.count += len(contexts)

    def gather_from_ranks(self):
        "In a distributed validation (blurlite calls it on every rank): the sums over every rank's questions."
        self.total, self.count = all_reduce_sums(self.total, self.count)

    @property
    def value(self):
        return self.total / self.count if self.count else None

    @property
    def name(self):
        return f"squad_{self.score}"


squad_exact_match, squad_f1 = QAMetric("exact_match"), QAMetric("f1")


def _default_loss(dls):
    return QALossFlat()


def _default_metrics(dls) -> list:
    return [QAMetric("exact_match"), QAMetric("f1")]


def _prepare_model(dls, hf_model) -> None:
    "Check that `hf_model` has a span head (start and end logits)."
    model = plain_model(hf_model)
    if "QuestionAnswering" not in type(model).__name__ or getattr(model.config, "num_labels", 2) != 2:
        raise ValueError(f"{type(model).__name__} is not an extractive question-answering model (start and end "
                         "logits): load it with get_hf_objects(..., model_cls=AutoModelForQuestionAnswering)")


# ------------------------------------------------------------------------------------------------------- display
def _trimmed(context: str, answer, first: int, last: int, trunc_at: int | None) -> str:
    "The context (or the window's part of it), at most `trunc_at` characters around the answer, with '…' at cuts."
    last = len(context) if last < 0 else last
    if trunc_at is None or last - first <= trunc_at:
        return context[first:last]
    middle = (answer.start + answer.end) // 2 if isinstance(answer, QAnswerText) and answer.end else first
    lo = max(first, min(middle - trunc_at // 2, last - trunc_at))
    return ("…" if lo > first else "") + context[lo:lo + trunc_at] + ("…" if lo + trunc_at < last else "")


def _shown(answer) -> str:
    return str(answer) if str(answer) else "(no answer)"


def _first_answer(y):
    return y.answers[0] if isinstance(y, QAReferences) and y.answers else y


@dispatch
def show_batch(x: HFQAInput, y, samples, ctxs=None, max_n=10, trunc_at=300, **kwargs):
    rows = [{"question": s[0].question, "context": _trimmed(s[0].context, _first_answer(s[1]), s[0].first,
                                                             s[0].last, trunc_at), "answer": _shown(s[1])}
            for s in samples[:max_n]]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def show_results(x: HFQAInput, y, samples, outs, ctxs=None, max_n=10, trunc_at=300, **kwargs):
    rows = [{"question": s[0].question, "context": _trimmed(s[0].context, _first_answer(s[1]), 0, -1, trunc_at),
             "answer": _shown(s[1]), "predicted": _shown(o[0])} for s, o in zip(samples[:max_n], outs)]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def plot_top_losses(x: HFQAInput, y, samples, outs, raw_outs, losses, trunc_at=300, **kwargs):
    rows = [{"question": s[0].question, "context": _trimmed(s[0].context, _first_answer(s[1]), 0, -1, trunc_at),
             "answer": _shown(s[1]), "predicted": _shown(o[0]), "score": float(r[SCORE]), "loss": float(loss)}
            for s, o, r, loss in zip(samples, outs, raw_outs, losses)]
    display_df(pd.DataFrame(rows))


# ------------------------------------------------------------------------------------------------------ inference
def _pairs(question, context) -> tuple[list[tuple[str, str]], bool]:
    "The (question, context) pairs asked, as the pipeline read its arguments; and whether one was asked."
    if isinstance(question, str) and isinstance(context, str):
        return [(question, context)], True
    if isinstance(question, (list, tuple)) and isinstance(context, str):
        return [(q, context) for q in question], False
    if isinstance(question, (list, tuple)) and isinstance(context, (list, tuple)):
        if len(question) != len(context):
            raise ValueError(f"{len(question)} questions but {len(context)} contexts: give one context per question, "
                             "or one context for all")
        return list(zip(question, context)), False
    raise TypeError(f"answer takes a question and a context (str), or lists of them; got {type(question).__name__} "
                    f"and {type(context).__name__}")


@patch
def answer(self: Learner, question, context, top_k: int = 1, max_answer_len: int = 15,
           handle_impossible_answer: bool = False, max_seq_len: int | None = None,
           doc_stride: int | None = None, align_to_words: bool = True, bs: int | None = None):
    """Answer `question` from `context` as transformers' `pipeline("question-answering")` did (removed in
    transformers 5; these are its answers): a dict `{"score", "start", "end", "answer"}` (characters of the
    context), or a list of the `top_k` best when there are several.

    Lists of questions and contexts (or many questions, one context) give one result per question, their windows run
    `bs` at a time in length-sorted batches; one question in a list answers as one question (as the pipeline did).
    The windows default to the learner's (`max_seq_len`: its `max_length`; `doc_stride`: its `stride`, or the
    pipeline's `min(max_seq_len // 2, 128)` for another `max_seq_len`); the rest are the pipeline's defaults.
    `blurlite predict` and validation use the learner's `max_answer_len` and `handle_impossible_answer` (True when
    its training data had unanswerable questions, SQuAD v2).
    """
    if task_for(self.dls).name != TASK_NAME:
        raise TypeError(f"answer is for question-answering learners; this learner is for {task_for(self.dls).name}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int of at least 1, got {top_k!r}")
    tfm = find_hf_transform(self.dls)
    if max_answer_len < 1:
        raise ValueError(f"max_answer_len must be at least 1, got {max_answer_len}")
    if doc_stride is None:  # the learner's windows, or the pipeline's default stride for other lengths
        doc_stride = tfm.stride if max_seq_len in (None, tfm.max_length) else None
    max_seq_len = max_seq_len or tfm.max_length
    doc_stride = _stride(max_seq_len, doc_stride, tfm.hf_tokenizer)
    pairs, single = _pairs(question, context)
    keys = [tfm.key(p, lambda i=i: f"question {i}") for i, p in enumerate(pairs)]
    docs = tfm.tokenize(keys, max_length=max_seq_len, stride=doc_stride)
    windows, doc_ids = _run_windows(self, docs, bs or self.dls.valid.bs or 16)
    tokenizer = tfm.hf_tokenizer
    results = search_answers(windows, [k[1] for k in keys], doc_ids, top_k, max_answer_len,
                             bool(handle_impossible_answer),
                             align_to_words, tokenizer.padding_side == "right", tokenizer.cls_token_id)
    results = [r[0] if len(r) == 1 else r for r in results]
    return results[0] if single or len(results) == 1 else results


def _run_windows(learn, docs: list[HFQAInput], bs: int) -> tuple[list[dict], list[int]]:
    "Every window of `docs` through the model, `bs` a batch, longest first: unpadded numpy windows, in order."
    flat = [(d, {k: v[w] for k, v in doc.items()}) for d, doc in enumerate(docs) for w in range(len(doc["input_ids"]))]
    order = np.argsort([-len(w["input_ids"]) for _, w in flat], kind="stable")
    dl, device = learn.dls.valid, next(learn.model.parameters()).device
    out = [None] * len(flat)
    learn.model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), bs):
            chunk = order[start:start + bs]
            x = dl.create_batch([(HFQAInput(flat[i][1]),) for i in chunk])[0]
            outputs = learn.model(to_device(dict(x), device))
            for i, window in zip(chunk, _numpy_windows(x, outputs["start_logits"], outputs["end_logits"])):
                out[i] = window
    return out, [d for d, _ in flat]


# ------------------------------------------------------------------------------------- saving and the command line
def _settings(dls) -> dict:
    tfm = find_hf_transform(dls)
    return {"max_answer_len": tfm.max_answer_len, "handle_impossible_answer": tfm.handle_impossible_answer}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free question-answering `DataLoaders` with the saved learner's windows and answer settings."
    block = HFQABlock(*hf_objects, **{k: v for k, v in block_kwargs.items() if k not in ("long_texts", "window_agg")},
                      max_answer_len=settings["max_answer_len"],
                      handle_impossible_answer=settings["handle_impossible_answer"])
    df = pd.DataFrame({"question": ["x"] * bs, "context": ["x"] * bs,
                       "answers": [{"text": [], "answer_start": []}] * bs})
    dblock = DataBlock(blocks=(block, QAnswersBlock), get_x=ColReader(["question", "context"]),
                       get_y=ColReader("answers"), splitter=IndexSplitter([]), n_inp=1)
    return dblock.dataloaders(df, bs=bs).new_empty()


def _read_json(path) -> tuple[pd.DataFrame, dict]:
    "A SQuAD JSON file (v1.1 or v2.0), or a JSON list of records with question, context and answers."
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return (squad_to_df(data) if isinstance(data, Mapping) else pd.DataFrame(data)), {}


def _from_df(df, model, text_col="question", label_col="answers", valid_col=None, valid_pct=0.2, bs=16,
             max_length=None, seed=None, stride=None, context_col="context"):
    return HFQADataLoaders.from_df(df, model, question_col=text_col or "question", context_col=context_col,
                                   answers_col=label_col or "answers", valid_col=valid_col, valid_pct=valid_pct, bs=bs,
                                   max_length=max_length or 384, stride=stride, seed=seed)


def _predict_inputs(texts: list, options: dict, file) -> list[dict]:
    "The command line's questions: --question/--context (one context for all, or one each), or a JSON Lines --file."
    if texts:
        raise ValueError("a question-answering model takes --question Q --context C (or --file with JSON Lines of "
                         "{\"question\": ..., \"context\": ...}), not texts")
    questions, contexts = options.get("--question", []), options.get("--context", [])
    if len(contexts) not in (0, 1, len(questions)) or (questions and not contexts) or (contexts and not questions):
        raise ValueError(f"{len(questions)} --question but {len(contexts)} --context: give one context for all "
                         "questions, or one per question")
    items = [{"question": q, "context": contexts[0] if len(contexts) == 1 else contexts[i]}
             for i, q in enumerate(questions)]
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines() if file is not None else [], 1):
        if line.strip():
            try:
                record = json.loads(line)
                items.append({"question": record["question"], "context": record["context"]})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{file}, line {n}: expected JSON with \"question\" and \"context\" ({e})") from e
            _check_texts(items[-1], f"{file}, line {n}")
    if not items:
        raise ValueError("give --question Q --context C, or --file FILE (JSON Lines with question and context)")
    for i, item in enumerate(items[:len(questions)]):
        _check_texts(item, f"--question {i + 1}")
    return items


def _check_texts(item: dict, where: str) -> None:
    for name in ("question", "context"):
        if not isinstance(item[name], str) or not item[name].strip():
            raise ValueError(f"{where}: the {name} must be a non-empty text, got {item[name]!r}")


def _predict_json(learn, items: list) -> list:
    if not items:
        return []
    questions = [i["question"] if isinstance(i, Mapping) else i[0] for i in items]
    contexts = [i["context"] if isinstance(i, Mapping) else i[1] for i in items]
    tfm = find_hf_transform(learn.dls)  # the model's own answer settings (its data's no-answer questions)
    results = learn.answer(questions, contexts, max_answer_len=tfm.max_answer_len,
                           handle_impossible_answer=tfm.handle_impossible_answer)
    return [results] if len(items) == 1 else results


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFQAInput, auto_model=AutoModelForQuestionAnswering, default_loss=_default_loss,
    default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls, from_df=_from_df,
    predict_json=_predict_json, prepare_model=_prepare_model, non_model_keys=NON_MODEL_KEYS, pad_values=PAD_VALUES,
    pred_from_outputs=start_end_logits, model_targets=positions_as_labels, combine_windows=search_windows,
    columns=("question", "answers"), readers={".json": _read_json}, aliases=("qa",), peft_task_type="QUESTION_ANS",
    predict_options={"--question": "a question to answer (with --context)",
                     "--context": "the context of the questions (one for all, or one per --question)"},
    predict_inputs=_predict_inputs,
    description="extractive question answering: question, context and SQuAD answers columns, or SQuAD JSON"))
