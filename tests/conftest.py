"""Shared fixtures: tiny models from configs and tokenizers from an in-test vocab; nothing from the hub."""
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

POSITIVE = ["good", "great", "nice", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring"]
NEUTRAL = ["movie", "film", "the", "a", "was", "plot", "actor", "is", "and", "very"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIALS + POSITIVE + NEGATIVE + NEUTRAL + ["##s", "##ly", ".", ",", "!"]


def tiny_bert_config(num_labels=2, **kwargs):
    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, **kwargs)


def save_tiny_bert(path, model_cls=BertForSequenceClassification, seed: int = 0, **config_kwargs):
    "Write a tiny BERT checkpoint (`model_cls`, config `tiny_bert_config(**config_kwargs)`) and its tokenizer to `path`."
    torch.manual_seed(seed)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    model_cls(tiny_bert_config(**config_kwargs)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    "A local checkpoint directory: tiny BERT classifier and a WordPiece tokenizer over VOCAB."
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def save_tiny_gpt2(path, seed: int = 0, n_positions: int = 64):
    """Write a tiny GPT-2 causal LM and its byte-level BPE tokenizer (trained here; no pad token, as GPT-2's) to
    `path`."""
    import transformers as tf
    from arch_zoo import byte_bpe

    torch.manual_seed(seed)
    vocab, merges = byte_bpe(("<|endoftext|>",))
    tokenizer = tf.GPT2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.save_pretrained(path)
    eos = tokenizer.eos_token_id
    config = tf.GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                           bos_token_id=eos, eos_token_id=eos)
    tf.GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    "A local checkpoint directory: a tiny GPT-2 causal LM (64 positions) and its tokenizer (no pad token)."
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def save_tiny_seq2seq(path, kind: str = "t5", seed: int = 0):
    """Write a tiny T5 or BART (`kind`) encoder-decoder over the tiny BERT's WordPiece vocabulary to `path`, with the
    tokenizer: pad [PAD], end [SEP], decoder start [PAD] (T5's convention) or [SEP] (BART's)."""
    import transformers as tf

    torch.manual_seed(seed)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    tokenizer.save_pretrained(path)
    pad, eos = tokenizer.pad_token_id, tokenizer.sep_token_id
    if kind == "t5":
        model = tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=len(VOCAB), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad))
    else:
        model = tf.BartForConditionalGeneration(tf.BartConfig(
            vocab_size=len(VOCAB), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            pad_token_id=pad, bos_token_id=tokenizer.cls_token_id, eos_token_id=eos, decoder_start_token_id=eos,
            forced_eos_token_id=eos))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    "A local checkpoint directory: a tiny T5 encoder-decoder over the tiny BERT's vocabulary, and its tokenizer."
    return save_tiny_seq2seq(tmp_path_factory.mktemp("tiny-t5"), "t5")


def child_process_env() -> dict:
    """The environment of a blurlite process a test starts (torchrun, the command line): no distributed settings
    inherited, one thread a process, offline, this checkout importable."""
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_CPU")}
    repo = str(Path(__file__).resolve().parents[1])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p))
    return env


def make_reviews(n=120, seed=0, n_classes=2):
    "Synthetic reviews whose sentiment words decide the label."
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % n_classes
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 12))]
        cue = POSITIVE if label == 0 else NEGATIVE if label == 1 else ["plot", "actor"]
        words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        rows.append({"text": " ".join(words), "label": ["positive", "negative", "neutral"][label],
                     "is_valid": i % 5 == 0})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory):
    "80 synthetic reviews in a CSV file (text, label, is_valid), for the command line."
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    make_reviews(80).to_csv(path, index=False)
    return path


@pytest.fixture
def reviews():
    return make_reviews()


@pytest.fixture
def tiny_objects(tiny_bert_dir):
    "Fresh `get_hf_objects` output for the tiny BERT (a new model per test)."
    from blurlite.hf_objects import get_hf_objects

    return get_hf_objects(tiny_bert_dir)


def tiny_dls(df, hf_objects, bs=8, **kwargs):
    "Classification DataLoaders through the DataBlock API."
    from fastai.text.all import CategoryBlock, ColReader, ColSplitter, DataBlock

    from blurlite.data import HFTextBlock

    block = HFTextBlock(*hf_objects, **kwargs)
    return DataBlock(blocks=(block, CategoryBlock), get_x=ColReader("text"), get_y=ColReader("label"),
                     splitter=ColSplitter("is_valid")).dataloaders(df, bs=bs)


@pytest.fixture
def shown(monkeypatch):
    "The DataFrames that show_batch/show_results/plot_top_losses display, captured instead of printed."
    import blurlite.tasks.sequence_classification as sc

    frames = []
    monkeypatch.setattr(sc, "display_df", frames.append)
    return frames


def fastai_class_attributes() -> dict:
    """Every attribute of every class defined in fastai (and fasttransform), by identity: a snapshot to compare.

    blurlite must leave fastai's classes as they are (it extends them by subclassing), so that other learners in
    the same process behave exactly as without blurlite.
    """
    import sys

    snapshot = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith(("fastai.", "fasttransform")) or module is None:
            continue
        for cls_name, cls in list(vars(module).items()):
            if isinstance(cls, type) and cls.__module__ == name:
                snapshot[f"{name}.{cls_name}"] = {k: id(v) for k, v in vars(cls).items()}
    return snapshot


def changed_attributes(before: dict, after: dict) -> list[str]:
    "The class attributes that differ between two `fastai_class_attributes` snapshots (classes in both)."
    # `__slotnames__`: a cache that pickling (copyreg) writes on any class it pickles, fastai's or not
    return sorted(f"{cls}.{k}" for cls in before.keys() & after.keys()
                  for k in before[cls].keys() | after[cls].keys()
                  if before[cls].get(k) != after[cls].get(k) and k != "__slotnames__")


def ner_frame(reviews):
    "Word lists tagged POS/NEG by sentiment word, from the review texts."
    words = [t.split() for t in reviews.text]
    tags = [["B-POS" if w in POSITIVE else "B-NEG" if w in NEGATIVE else "O" for w in ws] for ws in words]
    return pd.DataFrame({"words": words, "tags": tags, "is_valid": reviews.is_valid})


def regression_frame(reviews):
    "Reviews scored by sentiment (1 positive, 0 negative), plus a little for length: a float `label`."
    score = (reviews.label == "positive").astype(float) + reviews.text.str.split().str.len() / 50
    return pd.DataFrame({"text": reviews.text, "label": score, "is_valid": reviews.is_valid})


def qa_frame(reviews):
    "Questions on the reviews: which word was good (positive reviews) or bad (negative); answers in SQuAD's form."
    rows = []
    for text, label, is_valid in zip(reviews.text, reviews.label, reviews.is_valid):
        words = text.split(" ")
        cue = next(i for i, w in enumerate(words) if w in POSITIVE + NEGATIVE)
        start = len(" ".join(words[:cue])) + (1 if cue else 0)
        rows.append({"question": "what was good" if label == "positive" else "what was bad", "context": text,
                     "answers": {"text": [words[cue]], "answer_start": [start]}, "is_valid": is_valid})
    return pd.DataFrame(rows)


def seq2seq_frame(reviews):
    "Each review's sentiment words as its target text (a text-to-text task the tiny models learn)."
    targets = [" ".join(w for w in t.split() if w in POSITIVE + NEGATIVE) + " ." for t in reviews.text]
    return pd.DataFrame({"text": reviews.text, "target": targets, "is_valid": reviews.is_valid})


# One example per registered task, for the contract tests (a new task adds its own): the training frame (columns as
# the task's `from_df` defaults), the inputs of `predict_json`, and how the task's pipeline is called on them.
TASK_EXAMPLES = {
    "text-classification": dict(frame=lambda n: make_reviews(n), texts=["good movie and great actor", "a film",
                                                                         "the plot was boring and bad"],
                                pipeline_kwargs={}),
    "text-regression": dict(frame=lambda n: regression_frame(make_reviews(n)),
                            texts=["good movie and great actor", "a film", "the plot was boring and bad"],
                            pipeline_kwargs={"function_to_apply": "none"}),
    "token-classification": dict(frame=lambda n: ner_frame(make_reviews(n)),
                                 texts=["good movie and great actor", "the plot was boring and bad"],
                                 pipeline_kwargs={"aggregation_strategy": "simple"}),
    "fill-mask": dict(frame=lambda n: make_reviews(n)[["text", "is_valid"]],
                      texts=["the movie was [MASK] .", "the [MASK] was very [MASK]"], pipeline_kwargs={}),
    # question answering's inputs are (question, context) pairs; the command line takes --question/--context
    "question-answering": dict(frame=lambda n: qa_frame(make_reviews(n)),
                               texts=[{"question": "what was good", "context": "the movie was good and the actor fine"},
                                      {"question": "what was bad", "context": "a boring plot"}],
                               predict_argv=["--question", "what was good", "--context",
                                             "the movie was good and the actor fine", "--question", "what was bad",
                                             "--context", "a boring plot"],
                               pipeline_kwargs={}),
    # causal LM needs a decoder: the tiny GPT-2 (`checkpoint` names the fixture); prompts are continued greedily
    "causal-lm": dict(frame=lambda n: make_reviews(n)[["text", "is_valid"]], checkpoint="tiny_gpt2_dir",
                      texts=["the movie was", "a good film and"],
                      pipeline_kwargs={"max_new_tokens": 50, "do_sample": False}),
    # sequence to sequence: a tiny T5; transformers 5 has no text2text pipeline (test_seq2seq checks 4.57.6's way)
    "seq2seq": dict(frame=lambda n: seq2seq_frame(make_reviews(n)), checkpoint="tiny_t5_dir",
                    texts=["the movie was good", "a bad film and a boring plot"], pipeline_kwargs={}),
}


def task_example(task) -> dict:
    "The contract tests' example for `task` (an `HFTask`); a clear failure for a task registered without one."
    assert task.name in TASK_EXAMPLES, f"task {task.name!r} has no example: add one to TASK_EXAMPLES in conftest.py"
    return TASK_EXAMPLES[task.name]


def task_checkpoint(request, task) -> str:
    "The checkpoint directory the contract tests build `task`'s learners from: its example's, else the tiny BERT."
    return request.getfixturevalue(task_example(task).get("checkpoint", "tiny_bert_dir"))
