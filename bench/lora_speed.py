"""LoRA vs full fine-tuning: MiniLM on the IMDB sample, training speed, peak memory, accuracy and artifact sizes.

Each mode runs in a fresh process (so that its peak RSS is its own): the same split, seed, epochs and batch size;
full fine-tuning at `--lr`, LoRA (rank `--lora-r`, alpha 2r, peft's targets for BERT: query and value; the head
trains too) at `--lora-lr`. Prints one table: samples/s of training, peak RSS, accuracy, trainable parameters and
the `save_pretrained` artifact's size (LoRA: the adapter, and the merged model). Run:
`python bench/lora_speed.py` (`--quick` for a smoke run).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_parser, load_reviews, minilm_dir, parse_bench_args, set_seed


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def run_mode(args) -> dict:
    "Train one mode in this process; what it measured."
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from peft import LoraConfig

    from blurlite.all import HFTextDataLoaders, hf_learner

    df = load_reviews(args)
    set_seed(args.seed)
    dls = HFTextDataLoaders.from_df(df, minilm_dir(), text_col="text", label_col="label", valid_col="is_valid",
                                    bs=args.bs, max_length=args.max_length, seed=args.seed)
    lora = args.mode == "lora"
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.1) if lora else None
    learn = hf_learner(dls, peft_config=peft_config)
    counts = learn.hf_parameter_counts()
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs, args.lora_lr if lora else args.lr)
    seconds = time.perf_counter() - start
    _, accuracy, _ = learn.validate()
    result = {"mode": args.mode, "train_s": seconds, "samples_per_s": args.epochs * len(dls.train_ds) / seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "accuracy": float(accuracy),
              **counts}
    with tempfile.TemporaryDirectory() as tmp:
        result["artifact_mb"] = _size(learn.save_pretrained(Path(tmp) / "a")) / 2**20
        if lora:
            result["merged_mb"] = _size(learn.save_pretrained(Path(tmp) / "m", merge_adapters=True)) / 2**20
    return result


def main(argv=None) -> list[dict]:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.set_defaults(max_length=128, bs=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--mode", choices=["full", "lora"], help="run one mode here and print its JSON (internal)")
    args = parse_bench_args(parser, argv)
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args)), flush=True)
        return []
    argv = list(sys.argv[1:] if argv is None else argv)
    results = []
    for mode in ("full", "lora"):
        done = subprocess.run([sys.executable, __file__, *argv, "--mode", mode], capture_output=True, text=True,
                              cwd=Path(__file__).parent)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    print(f"MiniLM, IMDB sample ({args.n_train} train / {args.n_valid} valid), max_length {args.max_length}, "
          f"bs {args.bs}, {args.epochs} epoch(s); full lr {args.lr}, LoRA r={args.lora_r} lr {args.lora_lr}")
    print("| mode | trainable params | train samples/s | train s | peak RSS MB | accuracy | artifact MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        artifact = f"{r['artifact_mb']:.2f}" + (f" (merged {r['merged_mb']:.1f})" if "merged_mb" in r else "")
        print(f"| {r['mode']} | {r['trainable']:,} of {r['total']:,} ({100 * r['trainable_fraction']:.2f}%) | "
              f"{r['samples_per_s']:.1f} | {r['train_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['accuracy']:.3f} | "
              f"{artifact} |")
    full, lora = results
    print(f"LoRA / full: speed {lora['samples_per_s'] / full['samples_per_s']:.2f}x, peak RSS "
          f"{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, accuracy {lora['accuracy'] - full['accuracy']:+.3f}")
    return results


if __name__ == "__main__":
    main()
