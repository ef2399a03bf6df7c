"""Masked LM: vocabulary logits at the selected positions only (MaskedLMLogitsCallback) vs at every position.

Same model (all-MiniLM-L6-v2 with its MLM head), same tinyshakespeare chunks, same masks (seeded), one epoch each,
in one process; prints the wall time, useful tokens/s and validation perplexity of both, and the speed-up.

    python bench/mlm_logits.py [--lines 3000] [--max-length 128] [--bs 16]
    python bench/mlm_logits.py --quick
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import fastai.text.all  # noqa: E402,F401  (what users import first: patches fit_one_cycle, no_bar)
import torch  # noqa: E402

SHAKESPEARE = common.ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULTS = dict(mlm_lines=3000, mlm_max_length=128, mlm_bs=16)  # 146 train chunks: about 1.5 min on 2 cores
QUICK = dict(mlm_lines=400, mlm_max_length=64, mlm_bs=8)
LR = 5e-4


def add_mlm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    "The masked-LM sizes, named so that they sit beside the classification benches' arguments."
    parser.add_argument("--mlm-lines", type=int, default=DEFAULTS["mlm_lines"],
                        help="first lines of tinyshakespeare, grouped into chunks (90%% train, 10%% valid)")
    parser.add_argument("--mlm-max-length", type=int, default=DEFAULTS["mlm_max_length"], help="tokens per chunk")
    parser.add_argument("--mlm-bs", type=int, default=DEFAULTS["mlm_bs"])
    return parser


def mlm_sizes(args) -> dict:
    "Lines, chunk length and bs of `args` (the defaults where absent), capped at QUICK's with `--quick`."
    return common.bench_sizes(args, DEFAULTS, QUICK)


def fit_mlm(lines: list[str], selected_only: bool, max_length: int, bs: int, seed: int = 0):
    """One epoch of MiniLM masked LM on `lines` (grouped into `max_length` chunks); returns (figures, learner).

    `selected_only=False` removes `MaskedLMLogitsCallback`, so the vocabulary projection runs at every position.
    """
    from fastai.torch_core import set_seed

    from blurlite.all import AutoModelForMaskedLM, HFMLMDataLoaders, MaskedLMLogitsCallback, get_hf_objects, hf_learner

    set_seed(seed)  # same head initialisation and masks for both runs
    hf_objects = get_hf_objects(common.minilm_dir(), model_cls=AutoModelForMaskedLM)
    dls = HFMLMDataLoaders.from_texts(lines, hf_objects, max_length=max_length, group=True, valid_pct=0.1,
                                      seed=seed, bs=bs)
    learn = hf_learner(dls)
    if not selected_only:
        learn.remove_cb(MaskedLMLogitsCallback)
    tokens = sum(int(len(dls.train_ds[i][0]["input_ids"])) for i in range(len(dls.train_ds)))
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.fit_one_cycle(1, LR)
        elapsed = time.perf_counter() - start
        _, perplexity, accuracy = learn.validate()
    name = "logits at the selected positions (default)" if selected_only else "logits at every position"
    figures = {"run": name, "train chunks": len(dls.train_ds), "useful tokens": tokens, "s/epoch": elapsed,
               "useful tok/s": tokens / elapsed, "valid perplexity": float(perplexity),
               "masked accuracy": float(accuracy)}
    return figures, learn


def run(args) -> dict:
    """Both runs on the same chunks; `learner` is the default (selected positions) one, for the fill-mask bench."""
    common.quiet_libraries()
    sizes = mlm_sizes(args)
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[: sizes["mlm_lines"]]
    rows = []
    for selected_only in (False, True):
        print(f"masked LM: {'selected positions' if selected_only else 'every position'} ...", flush=True)
        figures, learn = fit_mlm(lines, selected_only, sizes["mlm_max_length"], sizes["mlm_bs"],
                                 seed=getattr(args, "seed", 0))
        rows.append(figures)
    return {"settings": {"lines": len(lines), "max_length": sizes["mlm_max_length"], "bs": sizes["mlm_bs"],
                         "lr": LR, "epochs": 1},
            "rows": rows, "speed-up": rows[0]["s/epoch"] / rows[1]["s/epoch"], "learner": learn}


def report(result: dict) -> str:
    s = result["settings"]
    return (f"The first {s['lines']:,} lines of tinyshakespeare grouped into {s['max_length']}-token chunks "
            f"(90% train), bs {s['bs']}, `fit_one_cycle({s['epochs']}, {s['lr']:g})`, same seed and masks for "
            "both runs; 'every position' is `learn.remove_cb(MaskedLMLogitsCallback)`.\n\n"
            + common.markdown_table(result["rows"])
            + f"\n\nSpeed-up of the selected positions: {result['speed-up']:.2f}x.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", dest="mlm_lines", type=int, default=DEFAULTS["mlm_lines"])
    parser.add_argument("--max-length", dest="mlm_max_length", type=int, default=DEFAULTS["mlm_max_length"])
    parser.add_argument("--bs", dest="mlm_bs", type=int, default=DEFAULTS["mlm_bs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['mlm_lines']} lines, chunks of {QUICK['mlm_max_length']} tokens")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(report(run(args)))


if __name__ == "__main__":
    main()
