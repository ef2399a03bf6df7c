"""Token classification across tokenizer families: word accuracy via word lists vs via running text.

Trains a tiny model of each architecture (tokenizers trained in each family's style, tests/arch_zoo.py) on synthetic
sentences with person and place names, then labels the validation sentences two ways: `learn.predict(words)` (one
label per word) and `learn.predict_entities(" ".join(words), aggregation_strategy="first")` (running text, as
`pipeline("token-classification")` sees it). Both accuracies are over entity types per word (PER/LOC/O).

    python bench/ner_tokenizer_families.py [--epochs 15] [roberta longformer modernbert ...]
"""
import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import transformers  # noqa: E402
from fastai.text.all import *  # noqa: E402,F401,F403

from arch_zoo import ARCHS, ner_rows, save_checkpoint  # noqa: E402
from blurlite.all import HFTokenClassDataLoaders, hf_learner  # noqa: E402


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


def accuracies(learn, df) -> tuple[float, float]:
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=["bert", "roberta", "longformer", "modernbert", "xlm-roberta",
                                                      "deberta-v2"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rows", type=int, default=240)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    df = ner_rows(args.rows, seed=3)
    print(f"{args.rows} sentences ({(~df.is_valid).sum()} train), {args.epochs} epochs, lr 3e-3, bs 16")
    print("| architecture | tokenizer | words: predict(words) | running text: predict_entities(text) | gap |")
    print("|---|---|---|---|---|")
    for name in args.archs:
        arch = ARCHS[name]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            ckpt = save_checkpoint(arch, tmp)
            set_seed(0)
            dls = HFTokenClassDataLoaders.from_df(df, ckpt, valid_col="is_valid", bs=16, max_length=48, seed=0)
            learn = hf_learner(dls)
            with learn.no_bar(), learn.no_logging():
                learn.fit_one_cycle(args.epochs, 3e-3)
            words, text = accuracies(learn, df[df.is_valid])
            print(f"| {name} | {arch.family} | {words:.3f} | {text:.3f} | {words - text:+.3f} |"
                  f" <!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
