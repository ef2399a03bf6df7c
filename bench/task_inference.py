"""Task inference speed: `predict_entities` and `fill_mask` against their `transformers` pipelines, same model and bs.

- Token classification: MiniLM fitted briefly on the first WNUT-17 sentences that hold an entity, then
  `learn.predict_entities` against `pipeline("token-classification", aggregation_strategy=<predict_entities'
  default>)` on held-out sentences (the file's last; words joined by spaces, each within max_length tokens).
  Agreement: the share of texts whose entity lists are equal in (entity_group, start, end), and the largest score
  difference over those texts. Then the cold start: `learn.export()`, and in a fresh process `load_learner` + the
  first `predict_entities`.
- Masked LM: `learn.fill_mask(texts, top_k)` against `pipeline("fill-mask")` on tinyshakespeare lines from line
  30,000 on (the masked-LM benches train on the first few thousand), one word of each masked. Agreement: the share
  of texts with the same top-k tokens in the same order, and the largest score difference over those texts. The
  model is the masked-LM bench's (`run_all.py`) or, standalone, one fitted here for one epoch.

Each pipeline also runs one text per call: what a blurlite method that takes no batch size compares with.

    python bench/task_inference.py --quick
"""
from __future__ import annotations

import argparse
import inspect
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import inference_speed  # noqa: E402
import mlm_logits  # noqa: E402

import fastai.text.all  # noqa: E402,F401  (what users import first: patches fit_one_cycle, no_bar)
import pandas as pd  # noqa: E402
import torch  # noqa: E402

WNUT = common.ROOT.parent / "shared" / "data" / "wnut17_train.conll"
DEFAULTS = dict(ner_train=600, ner_epochs=1, ner_lr=1e-3, ner_max_length=128, texts=200, top_k=5)
QUICK = dict(ner_train=96, ner_epochs=1, ner_lr=1e-3, ner_max_length=64, texts=24, top_k=5)
MLM_TEXTS_FROM = 30_000  # first tinyshakespeare line of the fill-mask texts: far past what the MLM benches train on


def add_task_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    "Sizes of the token-classification fit and of both inference sets."
    d = DEFAULTS
    parser.add_argument("--ner-train", type=int, default=d["ner_train"], help="WNUT-17 sentences to fit on")
    parser.add_argument("--ner-epochs", type=int, default=d["ner_epochs"])
    parser.add_argument("--ner-lr", type=float, default=d["ner_lr"])
    parser.add_argument("--ner-max-length", type=int, default=d["ner_max_length"])
    parser.add_argument("--texts", type=int, default=d["texts"], help="texts to predict, per task")
    parser.add_argument("--top-k", type=int, default=d["top_k"], help="fill_mask's top_k")
    return parser


def task_sizes(args) -> dict:
    "The sizes of `args` (the defaults where absent), capped at QUICK's with `--quick`."
    return common.bench_sizes(args, DEFAULTS, QUICK)


def blurlite_call(method, texts: list[str], bs: int, **kwargs) -> tuple[object, str, int]:
    """A function running `method` on all `texts`, how it calls it, and the batch size that makes.

    With its batch size where the method takes one (`bs` or `batch_size`), in one call where it takes a list, else
    one call per text: the bench times the library as it is.
    """
    params = inspect.signature(method).parameters
    batch_arg = next((name for name in ("bs", "batch_size") if name in params), None)
    if batch_arg:
        return (lambda: method(texts, **{batch_arg: bs}, **kwargs)), f"one call, {batch_arg}={bs}", bs
    first = next(iter(params.values()))
    if any(t in str(first.annotation) for t in ("list", "Sequence", "Iterable")):  # a pipeline's default: bs 1
        return (lambda: method(texts, **kwargs)), "one call, no batch size argument", 1
    return (lambda: [method(t, **kwargs) for t in texts]), "one call per text", 1


def agreement(reference: list[list[dict]], other: list[list[dict]], key) -> tuple[float, float]:
    "Share of texts whose outputs have equal `key`s, and the largest score difference over those texts."
    same = [key(a) == key(b) for a, b in zip(reference, other)]
    diffs = [abs(float(x["score"]) - float(y["score"]))
             for a, b, s in zip(reference, other, same) if s for x, y in zip(a, b)]
    return sum(same) / len(same), max(diffs, default=float("nan"))


def entity_key(entities: list[dict]) -> list[tuple]:
    return [(e.get("entity_group", e.get("entity")), e["start"], e["end"]) for e in entities]


def fill_key(fills: list[dict]) -> list[int]:
    return [f["token"] for f in fills]


def time_jobs(jobs: dict, key, n_texts: int, repeats: int) -> list[dict]:
    """Rows of texts/s and agreement with the first job (the pipeline at bs), each the median of `repeats` calls.

    `jobs`: name -> (function, how it calls, batch size).
    """
    rows, reference = [], None
    for name, (job, call, bs) in jobs.items():
        print(f"task inference: {name} ...", flush=True)
        seconds, out = inference_speed.timed(job, repeats)
        reference = reference or out
        same, diff = agreement(reference, out, key)
        rows.append({"run": name, "call": call, "texts": n_texts, "bs": bs, "s": seconds,
                     "texts/s": n_texts / seconds, "same as pipeline": same, "max score diff": diff,
                     "outputs": sum(len(o) for o in out)})
    for row in rows:
        row["texts/s vs pipeline"] = row["texts/s"] / rows[0]["texts/s"]
    return rows


def wnut_frame(sizes: dict, tokenizer) -> pd.DataFrame:
    """Held-out sentences (is_valid): the last `texts` of the file that fit; training: the first `ner_train`
    sentences before them that hold an entity.

    Only a third of WNUT-17's sentences hold an entity: a short fit on all of them learns to say "O" everywhere and
    finds no entity to compare. Held-out sentences fit in `ner_max_length` tokens (no window or truncation to differ
    between blurlite and the pipeline) and use only training tags (the label vocab comes from the training tags).
    """
    from blurlite.all import read_conll

    df = read_conll(WNUT)
    fits = [len(tokenizer(" ".join(w))["input_ids"]) <= sizes["ner_max_length"] for w in df.words]
    held = [i for i in range(len(df) - 1, -1, -1) if fits[i]][: sizes["texts"]]
    train = df.iloc[: min(held)]
    train = train[[any(t != "O" for t in tags) for tags in train.tags]].head(sizes["ner_train"])
    tags = {t for row in train.tags for t in row}
    valid = df.iloc[sorted(held)]
    valid = valid[[set(t) <= tags for t in valid.tags]]
    return pd.concat([train.assign(is_valid=False), valid.assign(is_valid=True)], ignore_index=True)


def fit_ner(args, sizes: dict):
    "MiniLM fitted on WNUT-17 for `ner_epochs`; returns (fit figures, learner, held-out texts)."
    from transformers import AutoTokenizer

    from blurlite.all import HFTokenClassDataLoaders, hf_learner

    df = wnut_frame(sizes, AutoTokenizer.from_pretrained(common.minilm_dir()))
    common.set_seed(args.seed)
    dls = HFTokenClassDataLoaders.from_df(df, common.minilm_dir(), valid_col="is_valid", bs=args.bs,
                                          max_length=sizes["ner_max_length"], seed=args.seed)
    learn = hf_learner(dls)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="seqeval")  # precision 0 while no entity is predicted
        learn.fit_one_cycle(sizes["ner_epochs"], sizes["ner_lr"])
        values = learn.validate()
    fit = {"train sentences": len(dls.train_ds), "held-out sentences": len(dls.valid_ds),
           "epochs": sizes["ner_epochs"], "lr": sizes["ner_lr"], "fit s": time.perf_counter() - start,
           **{m.name: v for m, v in zip(learn.metrics, values[1:])}}
    return fit, learn, [" ".join(w) for w in df[df.is_valid].words]


def run_ner(args, sizes: dict, repeats: int) -> dict:
    "Token classification: fit, then `predict_entities` against the pipeline, then the cold start."
    from fastai.learner import Learner
    from transformers import pipeline

    from blurlite.data import find_hf_transform

    print("task inference: fitting the token classifier ...", flush=True)
    fit, learn, texts = fit_ner(args, sizes)
    learn.model.eval()
    strategy = inspect.signature(Learner.predict_entities).parameters["aggregation_strategy"].default
    pipe = pipeline("token-classification", model=learn.model.hf_model,
                    tokenizer=find_hf_transform(learn.dls).hf_tokenizer, aggregation_strategy=strategy, device="cpu")
    jobs = {"HF pipeline": (lambda: pipe(texts, batch_size=args.bs), f"one call, batch_size={args.bs}", args.bs),
            "HF pipeline, one call per text": (lambda: [pipe(t) for t in texts], "one call per text", 1),
            "blurlite predict_entities": blurlite_call(learn.predict_entities, texts, args.bs,
                                                       aggregation_strategy=strategy)}
    rows = time_jobs(jobs, entity_key, len(texts), repeats)
    print("task inference: export + load_learner + first predict_entities in a fresh process ...", flush=True)
    cold = inference_speed.cold_start(learn, texts[0], "predict_entities")
    settings = {"aggregation_strategy": strategy, "max_length": sizes["ner_max_length"], "bs": args.bs}
    return {"settings": settings, "fit": fit, "rows": rows, "cold_start": cold}


def mask_texts(n: int, mask_token: str, seed: int) -> list[str]:
    "`n` tinyshakespeare lines of 6 words or more from MLM_TEXTS_FROM on, one alphabetic word of each masked."
    rng, texts = random.Random(seed), []
    for line in mlm_logits.SHAKESPEARE.read_text(encoding="utf-8").splitlines()[MLM_TEXTS_FROM:]:
        words = line.split()
        candidates = [i for i, w in enumerate(words) if w.isalpha()]
        if len(words) >= 6 and candidates:
            words[rng.choice(candidates)] = mask_token
            texts.append(" ".join(words))
        if len(texts) == n:
            break
    return texts


def run_fill_mask(args, sizes: dict, repeats: int, learn=None) -> dict:
    "Masked LM: `fill_mask` against the fill-mask pipeline, on `learn` (fitted here when None)."
    from transformers import pipeline

    from blurlite.data import find_hf_transform

    model = "the one of the masked-LM training section, selected-positions run"
    if learn is None:
        print("task inference: fitting the masked LM ...", flush=True)
        m = mlm_logits.mlm_sizes(args)
        lines = mlm_logits.SHAKESPEARE.read_text(encoding="utf-8").splitlines()[: m["mlm_lines"]]
        learn = mlm_logits.fit_mlm(lines, True, m["mlm_max_length"], m["mlm_bs"], seed=args.seed)[1]
        model = f"fitted here, 1 epoch on the first {len(lines):,} lines"
    learn.model.eval()
    tokenizer = find_hf_transform(learn.dls).hf_tokenizer
    texts, top_k = mask_texts(sizes["texts"], tokenizer.mask_token, args.seed), sizes["top_k"]
    pipe = pipeline("fill-mask", model=learn.model.hf_model, tokenizer=tokenizer, device="cpu")
    jobs = {"HF pipeline": (lambda: pipe(texts, top_k=top_k, batch_size=args.bs), f"one call, batch_size={args.bs}",
                            args.bs),
            "HF pipeline, one call per text": (lambda: [pipe(t, top_k=top_k) for t in texts], "one call per text", 1),
            "blurlite fill_mask": blurlite_call(learn.fill_mask, texts, args.bs, top_k=top_k)}
    rows = time_jobs(jobs, fill_key, len(texts), repeats)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    return {"settings": {"model": model, "top_k": top_k, "bs": args.bs,
                         "mean tokens per text": sum(lengths) / len(lengths)},
            "rows": rows}


def run(args, mlm_learn=None, repeats: int = 2, only: str | None = None) -> dict:
    """Token classification (`ner`) and masked-LM (`fill_mask`) rows; `only` picks one ("ner" or "fill-mask")."""
    common.quiet_libraries()
    sizes, result = task_sizes(args), {}
    if only in (None, "ner"):
        result["ner"] = run_ner(args, sizes, repeats)
    if only in (None, "fill-mask"):
        result["fill_mask"] = run_fill_mask(args, sizes, repeats, mlm_learn)
    return result


def report_ner(result: dict) -> str:
    fit, s = result["fit"], result["settings"]
    return (f"all-MiniLM-L6-v2 with a new head, `fit_one_cycle({fit['epochs']}, {fit['lr']:g})` on the first "
            f"{fit['train sentences']} WNUT-17 sentences holding an entity; {fit['held-out sentences']} held-out "
            f"sentences from the end of the file (words joined by spaces, each within max_length {s['max_length']}); "
            f"aggregation_strategy={s['aggregation_strategy']!r} (predict_entities' default) for both. "
            "'same as pipeline': share of texts with the same (entity_group, start, end) list as the pipeline at "
            "bs; 'bs': the batch size of the model's forward passes; 'outputs': entities found.\n\n"
            + common.markdown_table([fit]) + "\n\n" + common.markdown_table(result["rows"])
            + "\n\nExport, then in a fresh process (`predict_entities` on one sentence):\n\n"
            + common.markdown_table([result["cold_start"]]))


def report_fill_mask(result: dict) -> str:
    s = result["settings"]
    return (f"MiniLM masked LM: {s['model']}. Tinyshakespeare lines from line "
            f"{MLM_TEXTS_FROM:,} on with one word masked ({s['mean tokens per text']:.1f} tokens per text on "
            f"average), top_k={s['top_k']}. 'same as pipeline': share of texts with the same top-k tokens in the "
            "same order as the pipeline at bs; 'bs': the batch size of the model's forward passes; "
            "'outputs': fillings returned.\n\n"
            + common.markdown_table(result["rows"]))


def report(result: dict) -> str:
    parts = []
    if "ner" in result:
        parts.append("### Token classification\n\n" + report_ner(result["ner"]))
    if "fill_mask" in result:
        parts.append("### Masked LM\n\n" + report_fill_mask(result["fill_mask"]))
    return "\n\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per variant (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", choices=("ner", "fill-mask"), default=None)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['ner_train']} training sentences, {QUICK['texts']} texts per task")
    add_task_args(parser)
    mlm_logits.add_mlm_args(parser)  # the masked LM fitted standalone
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(report(run(args, repeats=args.repeats, only=args.only)))


if __name__ == "__main__":
    main()
