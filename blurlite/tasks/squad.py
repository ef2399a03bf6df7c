"""SQuAD and transformers' question-answering pipeline, without fastai: reading and checking SQuAD data, SQuAD's
evaluation (answer normalisation, exact match, F1) and the pipeline's span search over a question's windows."""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from transformers.pipelines.document_question_answering import select_starts_ends

from ..checks import check_columns, check_frame, check_texts

__all__ = ["parse_answers", "check_qa_frame", "squad_to_df", "squad_to_question_generation_df", "normalize_answer", "squad_answer_scores", "p_mask",
           "search_answers"]


# ------------------------------------------------------------------------------------------------------ SQuAD data
def parse_answers(value, where: str = "answers") -> dict:
    "`value` as `{'text': [...], 'answer_start': [...]}` (a dict, or its JSON), checked; errors name `where`."
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: answers must be SQuAD's {{'text': [...], 'answer_start': [...]}} (or its "
                             f"JSON), got the text {value[:80]!r}") from e
    if not isinstance(value, Mapping) or not {"text", "answer_start"} <= set(value):
        raise ValueError(f"{where}: answers must be SQuAD's {{'text': [...], 'answer_start': [...]}}, got {value!r}")
    texts, starts = list(value["text"]), list(value["answer_start"])
    if len(texts) != len(starts):
        raise ValueError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
    for t, s in zip(texts, starts):
        if not isinstance(t, str) or not t:
            raise ValueError(f"{where}: an answer text must be a non-empty str, got {t!r}")
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"{where}: answer_start must be a character offset (int >= 0), got {s!r}")
    return {"text": texts, "answer_start": [int(s) for s in starts]}


def check_qa_frame(df: pd.DataFrame, question_col="question", context_col="context",
                   answers_col: str | None = "answers") -> list[dict] | None:
    """Check a question-answering frame; return its answers, parsed (None without `answers_col`). Errors name the row
    and column: missing or empty texts, answers not in SQuAD's form, an `answer_start` that does not point at its
    text."""
    check_frame(df)
    check_columns(df, [question_col, context_col] + ([answers_col] if answers_col else []), "question-answering")
    for column in (question_col, context_col):
        check_texts(df[column], df.index, column)
        empty = [i for i, v in zip(df.index, df[column]) if not v.strip()]
        if empty:
            raise ValueError(f"row {empty[0]!r}, column {column!r}: the text is empty; drop or fill that row")
    if answers_col is None:
        return None
    answers = []
    for row, context, value in zip(df.index, df[context_col], df[answers_col]):
        parsed = parse_answers(value, f"row {row!r}, column {answers_col!r}")
        for t, s in zip(parsed["text"], parsed["answer_start"]):
            if context[s:s + len(t)] != t:
                raise ValueError(f"row {row!r}, column {answers_col!r}: answer_start {s} does not point at the answer "
                                 f"{t!r} (the context holds {context[s:s + len(t)]!r} there); fix the offset")
        answers.append(parsed)
    return answers


def squad_to_df(path_or_dict) -> pd.DataFrame:
    """SQuAD JSON (v1.1 or v2.0; a path or the loaded dict) as one row per question: `id`, `title`, `question`,
    `context`, `answers` (`{"text": [...], "answer_start": [...]}`, empty lists for an unanswerable question)."""
    data = path_or_dict
    if not isinstance(data, Mapping):
        path = Path(path_or_dict)
        if not path.is_file():
            raise FileNotFoundError(f"no SQuAD file at {str(path)!r}")
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data.get("data"), list):
        raise ValueError("not SQuAD JSON: expected {'data': [{'title': ..., 'paragraphs': [...]}, ...]}")
    rows = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append({"id": qa.get("id", f"{a}-{p}-{len(rows)}"), "title": article.get("title", ""),
                             "question": qa["question"], "context": paragraph["context"],
                             "answers": {"text": [x["text"] for x in answers],
                                         "answer_start": [int(x["answer_start"]) for x in answers]}})
    if not rows:
        raise ValueError("the SQuAD data holds no question")
    return pd.DataFrame(rows)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def squad_to_question_generation_df(path_or_dict) -> pd.DataFrame:
    """SQuAD as a text-to-text task, question generation: one row per answered question, `text` = "answer: <its
    first answer> context: <the sentence of the context that holds it>", `target` = the question (also `id`,
    `title` and the whole paragraph, `context`: split by it, so that no paragraph is in both training and validation). Sentences end at ".", "!" or "?" followed by a space; unanswerable questions are left out.
    Example: `HFSeq2SeqDataLoaders.from_df(squad_to_question_generation_df("train.json"), hf_objects)`"""
    rows = []
    for row in squad_to_df(path_or_dict).itertuples():
        if not row.answers["text"]:
            continue
        answer, start = row.answers["text"][0], row.answers["answer_start"][0]
        bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(row.context)] + [len(row.context) + 1]
        first = max(b for b in bounds if b <= start)  # the sentence the answer starts in, on to where it ends
        last = min((b for b in bounds if b >= start + len(answer)), default=len(row.context))
        sentence = row.context[first:last].strip()
        rows.append({"id": row.id, "title": row.title, "context": row.context,
                     "text": f"answer: {answer} context: {sentence}", "target": row.question})
    if not rows:
        raise ValueError("the SQuAD data holds no answered question")
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------- SQuAD's evaluation
def normalize_answer(text: str) -> str:
    "SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE).split())


def squad_answer_scores(prediction: str, references: list[str]) -> tuple[float, float]:
    """SQuAD's exact match and F1 of `prediction`, each the best over `references` (SQuAD v2.0's evaluation:
    no references means no answer, matched by an empty prediction only)."""
    references = [r for r in references if normalize_answer(r)] or [""]  # as SQuAD v2.0's script
    predicted = normalize_answer(prediction).split()
    em, f1 = 0.0, 0.0
    for reference in references:
        gold = normalize_answer(reference).split()
        em = max(em, float(predicted == gold))
        if not gold or not predicted:
            f1 = max(f1, float(gold == predicted))
            continue
        same = sum((Counter(predicted) & Counter(gold)).values())
        if same:
            precision, recall = same / len(predicted), same / len(gold)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return em, f1


# ------------------------------------------------------------------------------- the question-answering pipeline
def p_mask(window: Mapping, question_first: bool, cls_token_id) -> np.ndarray:
    "The pipeline's p_mask: 1 where no answer may lie (question, special tokens; none context-first), 0 on [CLS]."
    seq = window["sequence_ids"]  # the context is 1 (`qa_windows`): question first, the tokenizer's own numbering
    p_mask = (seq != 1).astype(np.int64) if question_first else np.zeros(len(seq), dtype=np.int64)
    if cls_token_id is not None:
        p_mask[window["input_ids"] == cls_token_id] = 0
    return p_mask


def search_answers(windows: list[dict], contexts: list[str], doc_ids: list[int], top_k: int = 1,
                   max_answer_len: int = 15, handle_impossible_answer: bool = False, align_to_words: bool = True,
                   question_first: bool = True, cls_token_id=None) -> list[list[dict]]:
    """The answers of each question from its windows, as transformers' question-answering pipeline searched them.

    `windows`: unpadded numpy arrays per window (`start`, `end` logits, `input_ids`, `sequence_ids`, offsets, word
    spans), in order; `doc_ids[i]`: window i's question; `contexts`: the questions' contexts. Per window the
    pipeline's `select_starts_ends` (shipped with transformers) picks `2 * top_k + 10` spans (`top_k` without word
    alignment); spans become characters (whole words with `align_to_words`), answers with the same text (any case)
    add their scores; "" competes with the least no-answer score with `handle_impossible_answer`. Returns the
    `top_k` best per question, `{"score", "start", "end", "answer"}`, best first.
    """
    pre_topk = top_k * 2 + 10 if align_to_words else top_k
    found = [[] for _ in contexts]
    null = [1000000.0] * len(contexts)  # the pipeline's start: large and positive
    for window, d in zip(windows, doc_ids):
        attention = np.ones((1, len(window["input_ids"])), dtype=np.int64)
        starts, ends, scores, null[d] = select_starts_ends(
            window["start"][None], window["end"][None], p_mask(window, question_first, cls_token_id), attention,
            null[d], pre_topk, handle_impossible_answer, max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            if align_to_words and window["word_start"][s] >= 0 and window["word_end"][e] >= 0:
                a, b = int(window["word_start"][s]), int(window["word_end"][e])
            else:
                a, b = int(window["offset_start"][s]), int(window["offset_end"][e])
            text = contexts[d][a:b]
            same = next((x for x in found[d] if x["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += score.item()
            else:
                found[d].append({"score": score.item(), "start": a, "end": b, "answer": text})
    results = []
    for d, answers in enumerate(found):
        if handle_impossible_answer:
            answers = [*answers, {"score": null[d], "start": 0, "end": 0, "answer": ""}]
        results.append(sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k])
    return results
