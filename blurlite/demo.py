"""The embedded default job (`blurlite demo`): topic classification of 400 short sentences that ship with blurlite.

Train, evaluate, save a pickle-free artifact, reload it, predict, check `transformers.pipeline` on the artifact
agrees, and write a report (`report.json`) and plots (`loss.png`, `confusion_matrix.png`).
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

__all__ = ["demo", "demo_data", "validation_report"]

EXAMPLES = ["The striker signed a new contract with the club on Friday.",
            "Expect showers and strong winds along the coast tonight.",
            "Stir the garlic into the tomato sauce and simmer for ten minutes.",
            "The company unveiled a laptop with a faster chip."]


def demo_data():
    "The embedded topic set: columns text, label (sports/weather/food/technology), is_valid (80 of 400 rows)."
    import pandas as pd

    with resources.files("blurlite").joinpath("demo_data/topics.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def validation_report(learn) -> dict:
    "Validation loss and metrics, by name."
    values = learn.validate()
    names = ["valid_loss"] + [m.name for m in learn.metrics]
    return {n: (None if v is None else round(float(v), 4)) for n, v in zip(names, values)}


def _save_loss_plot(learn, out: Path) -> tuple[Path, dict]:
    """Plot the training and validation losses of the last `fit`; returns the file and how many points each curve has.

    Call it right after `fit`: `validate`/`get_preds` reset the recorder's losses (fastai's `before_fit`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = out / "loss.png"
    curves = {"train": len(learn.recorder.losses), "valid": len(learn.recorder.values)}
    learn.recorder.plot_loss()
    plt.savefig(path, bbox_inches="tight")
    plt.close("all")
    return path, curves


def _save_confusion_matrix(learn, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fastai.interpret import ClassificationInterpretation

    path = out / "confusion_matrix.png"
    ClassificationInterpretation.from_learner(learn).plot_confusion_matrix()
    plt.savefig(path, bbox_inches="tight")
    plt.close("all")
    return path


def demo(out="blurlite-demo", model=None, epochs: int = 2, lr: float = 2e-4, bs: int = 16) -> dict:
    "Run the whole job on the embedded data with `model` (a checkpoint directory or name); return the report."
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.torch_core import set_seed
    from transformers import pipeline

    from .learner import hf_learner
    from .loading import load_pretrained_learner
    from .tasks.sequence_classification import HFTextDataLoaders

    start, out = time.perf_counter(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = demo_data()
    set_seed(42)
    dls = HFTextDataLoaders.from_df(df, model, valid_col="is_valid", bs=bs, max_length=64, seed=42)
    learn = hf_learner(dls)
    print(f"blurlite demo: topic classification, {len(dls.train_ds)} train / {len(dls.valid_ds)} valid sentences, "
          f"{len(dls.vocab)} labels {list(dls.vocab)}", flush=True)
    learn.fit_one_cycle(epochs, lr)
    loss_plot, curves = _save_loss_plot(learn, out)  # before validating, which resets the recorded losses
    metrics = validation_report(learn)
    model_dir = learn.save_pretrained(out / "model")
    loaded = load_pretrained_learner(model_dir)
    predictions = loaded.hf_predict(EXAMPLES)
    from_pipeline = pipeline("text-classification", model=str(model_dir))(EXAMPLES)
    agree = all(p["label"] == q["label"] and abs(p["score"] - q["score"]) < 1e-4
                for p, q in zip(predictions, from_pipeline))
    plots = [loss_plot, _save_confusion_matrix(learn, out)]
    report = {"task": "text-classification", "train": len(dls.train_ds), "valid": len(dls.valid_ds),
              "epochs": epochs, "validation": metrics, "artifact": str(model_dir),
              "predictions": [{"text": t, **p} for t, p in zip(EXAMPLES, predictions)],
              "pipeline_agrees": agree, "plots": [str(p) for p in plots], "loss_curve_points": curves,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("\nvalidation: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    for p in report["predictions"]:
        print(f"  {p['label']:<11} {p['score']:.3f}  {p['text']}")
    print(f"artifact: {model_dir} (reloaded without unpickling; transformers.pipeline on it "
          f"{'agrees' if agree else 'DISAGREES'})")
    print(f"report: {out / 'report.json'}; plots: {', '.join(str(p) for p in plots)}")
    return report
