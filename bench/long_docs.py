"""Long documents (issue 18): windows vs truncation, on a synthetic task and on the IMDB sample; prediction speed.

1. Synthetic: texts of 14-20 neutral words, then 6 sentiment words that decide the label (past the first window of
   max_length 16). A tiny BERT (from a config, no dropout) learns it with `long_texts="windows"`; truncation cannot.
2. Real data: MiniLM on the IMDB sample at `--max-length` (64): the same rows, seed, epochs and lr with
   `long_texts="windows"` (`--stride`) and with truncation; validation accuracy per review.
3. Prediction speed: `hf_predict` of the windowed MiniLM on a document of `--doc-words` (20,000) words, windows
   `--bs` at a time (the largest forward batch is checked), and on the validation reviews (windows vs truncation).
Run: `python bench/long_docs.py` (`--quick` for a smoke run).
"""
from __future__ import annotations

import random
import tempfile
import time

from common import bench_parser, load_reviews, minilm_dir, parse_bench_args, set_seed, thread_settings

NEUTRAL = ["movie", "film", "the", "a", "was", "plot", "actor", "is", "and", "very"]
POSITIVE, NEGATIVE = ["good", "great", "nice", "fine", "lovely"], ["bad", "awful", "poor", "terrible", "boring"]


def synthetic(seed: int = 0) -> dict:
    "Validation accuracy with windows and with truncation on the end-cue task (tiny BERT, 20 epochs, a few s)."
    import pandas as pd
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from blurlite.all import HFTextDataLoaders, hf_learner

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + NEUTRAL
    path = tempfile.mkdtemp()
    torch.manual_seed(seed)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(path)
    rng, rows = random.Random(seed), []
    for i in range(120):
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(14, 20))]
        words += [rng.choice(POSITIVE if i % 2 == 0 else NEGATIVE) for _ in range(6)]
        rows.append({"text": " ".join(words), "label": ["positive", "negative"][i % 2], "is_valid": i % 5 == 0})
    df = pd.DataFrame(rows)
    results = {}
    for name, options in (("windows", dict(long_texts="windows", stride=4)), ("truncation", {})):
        set_seed(seed)
        learn = hf_learner(HFTextDataLoaders.from_df(df, path, valid_col="is_valid", bs=8, max_length=16, seed=seed,
                                                     **options))
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(20, 3e-3)
        results[name] = float(learn.validate()[1])
    return results


def real(args) -> tuple[dict, dict]:
    "Accuracy and time of windows and truncation on the IMDB sample; the learners, for the speed part."
    from blurlite.all import HFTextDataLoaders, hf_learner

    df = load_reviews(args)
    results, learners, steps = {}, {}, None
    runs = [("windows", dict(long_texts="windows", stride=args.stride)), ("truncation", {}),
            ("truncation, as many steps", {})]
    for name, options in runs[:3 if args.same_steps else 2]:
        set_seed(args.seed)
        start = time.perf_counter()
        dls = HFTextDataLoaders.from_df(df, minilm_dir(), text_col="text", label_col="label", valid_col="is_valid",
                                        bs=args.bs, max_length=args.max_length, seed=args.seed, **options)
        learn = hf_learner(dls)
        # windows give more training items than texts: the third run trains truncation for as many steps
        epochs = args.epochs if name != runs[2][0] else max(1, round(steps / len(dls.train)))
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(epochs, args.lr)
        steps = steps or epochs * len(dls.train)
        loss, accuracy, f1 = learn.validate()
        results[name] = {"accuracy": float(accuracy), "f1": float(f1), "valid loss": float(loss),
                         "training items": int(dls.train.n), "epochs": epochs, "steps": epochs * len(dls.train),
                         "s": time.perf_counter() - start}
        learners.setdefault(name.split(",")[0], learn)
    return results, learners


def speed(learners: dict, args) -> dict:
    "Seconds of `hf_predict` on one long document (windows) and on the validation reviews (windows, truncation)."
    df = load_reviews(args)
    words = " ".join(df.text).split()
    doc = " ".join((words * (args.doc_words // len(words) + 1))[:args.doc_words])
    learn = learners["windows"]
    tfm = learn.dls.train_ds.tls[0].tfms.fs[-1]
    n_windows = len(tfm.tokenize([doc])[0]["input_ids"])
    batches = []
    hook = learn.model.hf_model.register_forward_hook(lambda m, i, o: batches.append(o.logits.shape[0]))
    start = time.perf_counter()
    learn.hf_predict([doc], bs=args.bs)
    doc_s = time.perf_counter() - start
    hook.remove()
    reviews = list(df.text[df.is_valid])
    out = {"doc words": args.doc_words, "doc windows": n_windows, "doc s": doc_s, "windows/s": n_windows / doc_s,
           "largest forward batch": max(batches), "reviews": len(reviews)}
    for name, other in learners.items():
        start = time.perf_counter()
        other.hf_predict(reviews, bs=args.bs)
        out[f"reviews s ({name})"] = time.perf_counter() - start
    out["review windows"] = sum(len(x["input_ids"]) for x in tfm.tokenize(reviews))
    return out


def main(argv=None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.set_defaults(max_length=64, n_train=240, n_valid=200, lr=2e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--doc-words", type=int, default=20_000)
    parser.add_argument("--skip-real", action="store_true", help="the synthetic task only")
    parser.add_argument("--same-steps", action="store_true",
                        help="also train truncation for as many steps as windows (more epochs)")
    args = parse_bench_args(parser, argv)
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)

    print(f"threads: {thread_settings()}")
    start = time.perf_counter()
    syn = synthetic()
    print(f"synthetic end-cue task (tiny BERT, max_length 16, 24 validation texts): windows accuracy "
          f"{syn['windows']:.3f}, truncation {syn['truncation']:.3f} ({time.perf_counter() - start:.1f} s)")
    results = {"synthetic": syn}
    if args.skip_real:
        return results
    real_results, learners = real(args)
    for name, r in real_results.items():
        print(f"IMDB sample, MiniLM, max_length {args.max_length}, {args.n_train} train / {args.n_valid} valid reviews, "
              f"lr {args.lr}: {name}: accuracy {r['accuracy']:.3f}, F1 {r['f1']:.3f}, valid loss "
              f"{r['valid loss']:.3f}, {r['training items']} training items, {r['epochs']} epoch(s), {r['steps']} "
              f"steps, {r['s']:.1f} s")
    sp = speed(learners, args)
    print(f"hf_predict, one {sp['doc words']:,}-word document: {sp['doc windows']} windows in {sp['doc s']:.2f} s "
          f"({sp['windows/s']:.0f} windows/s, largest forward batch {sp['largest forward batch']}, bs {args.bs})")
    print(f"hf_predict, {sp['reviews']} validation reviews: windows {sp['reviews s (windows)']:.2f} s "
          f"({sp['review windows']} windows), truncation {sp['reviews s (truncation)']:.2f} s")
    results.update(real=real_results, speed=sp)
    return results


if __name__ == "__main__":
    main()
