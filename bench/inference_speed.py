"""Inference speed: `learn.hf_predict` against `transformers.pipeline("text-classification")`, same model and bs.

Also `hf_predict` under bf16 autocast and on an int8 (dynamically quantized) copy, with their agreement with the
float32 predictions, and the cold start of a deployed model: `learn.export()`, then in a fresh process
`load_learner` + the first `predict`.

    python bench/inference_speed.py --quick
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

COLD_START = """
import json, sys, time
start = time.perf_counter()
import fastai.text.all  # noqa: F401  (what a user imports)
from fastai.learner import load_learner
import blurlite.all  # noqa: F401
imported = time.perf_counter()
learn = load_learner(sys.argv[1])
loaded = time.perf_counter()
predict = getattr(learn, sys.argv[3])  # predict, predict_entities, ...
predict(sys.argv[2])
first = time.perf_counter()
predict(sys.argv[2])
second = time.perf_counter()
print(json.dumps({"import s": imported - start, "load_learner s": loaded - imported,
                  "first predict s": first - loaded, "second predict s": second - first}))
"""


def timed(fn, repeats: int) -> tuple[float, object]:
    "Median seconds of `repeats` calls of `fn` (after one warm-up call on the same input), and its last result."
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def agreement(reference: list[dict], other: list[dict]) -> tuple[float, float]:
    "Share of equal labels, and the largest score difference where the labels agree."
    same = [a["label"] == b["label"] for a, b in zip(reference, other)]
    diffs = [abs(a["score"] - b["score"]) for a, b, s in zip(reference, other, same) if s]
    return sum(same) / len(same), max(diffs, default=float("nan"))


def cold_start(learn, text: str, method: str = "predict") -> dict:
    "Export `learn`, then time imports, `load_learner` and two `learn.<method>(text)` calls in a fresh process."
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "learner.pkl"
        start = time.perf_counter()
        learn.export(path)
        export_s = time.perf_counter() - start
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run([sys.executable, "-c", COLD_START, str(path), text, method], capture_output=True,
                              text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the cold-start process failed:\n{done.stderr[-2000:]}")
        size_mb = path.stat().st_size / 1e6
    return {"export s": export_s, "file MB": size_mb, **json.loads(done.stdout.strip().splitlines()[-1])}


def pipeline_for(learn, args):
    "A text-classification pipeline on the learner's own model and tokenizer (the same weights)."
    from transformers import pipeline

    from blurlite.data import find_hf_transform

    tokenizer = find_hf_transform(learn.dls).hf_tokenizer
    return pipeline("text-classification", model=learn.model.hf_model, tokenizer=tokenizer, device="cpu")


def run(args, learn=None, gemm: dict | None = None, dims: dict | None = None, repeats: int = 2) -> dict:
    """Rows for fp32 `hf_predict`, the pipeline, bf16 autocast and int8, plus the cold start."""
    from blurlite.data import find_hf_transform
    from blurlite.mixed_precision import cpu_bf16_support, quantize_learner

    common.quiet_libraries()
    if learn is None:  # standalone: train the fp32 learner first (predictions of an untrained head are coin flips)
        from train_speed import train_blurlite

        learn = train_blurlite(common.load_reviews(args), args, "fp32")[1]
    learn.model.eval()
    gemm = gemm or {"fp32": common.gemm_rate(torch.float32)}
    dims = dims or common.model_dims(learn.model.hf_model)
    df = common.load_reviews(args)
    texts = df[df.is_valid].text.tolist()
    tokenizer = find_hf_transform(learn.dls).hf_tokenizer
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    flops = common.useful_flops(lengths, dims, training=False)
    pipe = pipeline_for(learn, args)
    bs, ml = args.bs, args.max_length
    jobs = {"blurlite hf_predict fp32": lambda: learn.hf_predict(texts, bs=bs),
            "HF pipeline fp32": lambda: pipe(texts, batch_size=bs, truncation=True, max_length=ml)}
    if cpu_bf16_support()[0]:
        def bf16_predict():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return learn.hf_predict(texts, bs=bs)
        jobs["blurlite hf_predict bf16 autocast"] = bf16_predict
    qlearn = quantize_learner(learn)
    jobs["blurlite hf_predict int8 (quantize_learner)"] = lambda: qlearn.hf_predict(texts, bs=bs)
    rows, reference = [], None
    for name, job in jobs.items():
        print(f"inference: {name} ...", flush=True)
        seconds, out = timed(job, repeats)
        reference = reference or out
        same, diff = agreement(reference, out)
        rows.append({"run": name, "texts": len(texts), "bs": bs, "s": seconds, "texts/s": len(texts) / seconds,
                     "useful tok/s": sum(lengths) / seconds, "/ fp32 GEMM": flops / seconds / gemm["fp32"],
                     "label agreement vs fp32": same, "max score diff": diff})
    base = next(r for r in rows if r["run"] == "HF pipeline fp32")
    for row in rows:
        row["texts/s vs pipeline"] = row["texts/s"] / base["texts/s"]
    print("inference: export + load_learner + first predict in a fresh process ...", flush=True)
    return {"rows": rows, "cold_start": cold_start(learn, texts[0])}


def report(result: dict) -> str:
    return (common.markdown_table(result["rows"]) + "\n\nExport, then in a fresh process:\n\n"
            + common.markdown_table([result["cold_start"]]))


def main(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per variant (median)")
    args = common.parse_bench_args(parser, argv)
    print(report(run(args, repeats=args.repeats)))


if __name__ == "__main__":
    main()
