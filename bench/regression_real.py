"""Text regression on real data, side by side with classification: MiniLM on the IMDB sample.

The sentiment becomes a score (positive 1.0, negative 0.0); the same model, split, epochs and learning rate train a
regressor (`RegressionBlock`, MSE) and a classifier. Prints the regressor's validation MSE, MAE and Pearson r, its
accuracy when its output is thresholded at 0.5, the classifier's accuracy, and whether
`pipeline("text-classification", function_to_apply="none")` on the saved regression artifact agrees with
`hf_predict`. Run: `python bench/regression_real.py` (`--quick` for a smoke run).
"""
from __future__ import annotations

import tempfile
import time

from common import bench_parser, load_reviews, minilm_dir, parse_bench_args, set_seed


def main(argv=None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parse_bench_args(parser, argv)
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.data.block import RegressionBlock
    from transformers import pipeline

    from blurlite.all import HFTextDataLoaders, hf_learner

    df = load_reviews(args)
    df["score"] = (df.label == "positive").astype(float)
    common = dict(text_col="text", valid_col="is_valid", bs=args.bs, max_length=args.max_length, seed=args.seed)
    results = {}
    for name, kwargs in (("regression", dict(label_col="score", y_block=RegressionBlock())),
                         ("classification", dict(label_col="label"))):
        set_seed(args.seed)
        dls = HFTextDataLoaders.from_df(df, minilm_dir(), **common, **kwargs)
        learn = hf_learner(dls)
        start = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(args.epochs, args.lr)
            values = learn.validate()
        names = ["valid_loss"] + [m.name for m in learn.metrics]
        results[name] = {**dict(zip(names, (round(float(v), 4) for v in values))),
                         "seconds": round(time.perf_counter() - start, 1)}
        if name == "regression":
            preds, targs = learn.get_preds()
            results[name]["thresholded_accuracy"] = round(float(((preds[:, 0] > 0.5) == (targs > 0.5)).float()
                                                                .mean()), 4)
            texts = list(dls.valid_ds.items.text[:50])
            with tempfile.TemporaryDirectory() as tmp:
                path = learn.save_pretrained(f"{tmp}/model")
                piped = pipeline("text-classification", model=str(path), function_to_apply="none")(texts, truncation=True)
            ours = learn.hf_predict(texts)
            results[name]["pipeline_max_abs_diff"] = max(abs(a["score"] - b["score"]) for a, b in zip(ours, piped))
    print(f"IMDB sample, {len(df[~df.is_valid])} train / {len(df[df.is_valid])} valid, MiniLM, max_length "
          f"{args.max_length}, bs {args.bs}, {args.epochs} epochs, lr {args.lr}, seed {args.seed}")
    for name, values in results.items():
        print(f"{name:>14}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return results


if __name__ == "__main__":
    main()
