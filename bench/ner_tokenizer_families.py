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

from arch_zoo import ARCHS, ner_rows, save_checkpoint, word_accuracies  # noqa: E402
from blurlite.all import HFTokenClassDataLoaders, hf_learner  # noqa: E402


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
            words, text = word_accuracies(learn, df[df.is_valid])
            print(f"| {name} | {arch.family} | {words:.3f} | {text:.3f} | {words - text:+.3f} |"
                  f" <!-- {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
