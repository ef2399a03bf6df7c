"""Training speed: blurlite (fp32, bf16) against the HF `Trainer` (random order, group_by_length) on one epoch.

Same model (all-MiniLM-L6-v2 with a new 2-class head, seeded alike), same reviews, same hyper-parameters:
max_length, bs, one epoch, peak lr, AdamW-style decoupled weight decay 0.01 (none on biases and norms),
betas (0.9, 0.99), eps 1e-5, no gradient clipping, warm-up over 25% of the steps then cosine decay
(fastai's one-cycle warms up along a cosine from lr/25 and also cycles beta1 0.95-0.85-0.95; the Trainer warms up
linearly from 0). Useful tokens are the attention-mask sum over the training batches; the epoch time covers the
training batches only (no validation). Extras (`--no-extras` skips them): blurlite with torch's fused AdamW, with
attention dropout 0, and the Trainer in bf16.

    python bench/train_speed.py --quick
"""
from __future__ import annotations

import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import fastai.text.all  # noqa: E402,F401  (what users import first: patches fit_one_cycle, no_bar)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402


class TrainMeter(Callback):
    "Useful and padded tokens of the training batches, and the time spent on them."
    order = 100

    def before_fit(self):
        self.lengths, self.padded, self.seconds, self.cpu_seconds = [], 0, 0.0, 0.0

    def before_train(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def before_batch(self):
        if self.training:
            mask = self.xb[0]["attention_mask"]
            self.lengths += mask.sum(1).tolist()
            self.padded += mask.numel()

    def after_train(self):
        self.seconds += time.perf_counter() - self.start
        self.cpu_seconds += time.process_time() - self.cpu_start


def fused_adamw():
    """An `opt_func` for `hf_learner`: torch's fused AdamW (one kernel for all parameters) behind fastai's wrapper.

    fastai's own `Adam` updates each parameter tensor with a dozen separate ops; one-cycle still schedules lr and
    beta1 through the wrapper. eps and beta2 as fastai's Adam; weight decay 0.01 on every parameter (the wrapper
    ignores fastai's no-decay-on-norms-and-biases flag).
    """
    from fastai.optimizer import OptimWrapper

    return partial(OptimWrapper, opt=partial(torch.optim.AdamW, fused=True, betas=(0.9, 0.99), eps=1e-5))


def label_config(df) -> dict:
    "`num_labels`, `id2label`, `label2id` for `df`'s labels (sorted, as fastai's vocab)."
    labels = sorted(df.label.unique())
    return dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})


def minilm_objects(df, checkpoint=None, **config_kwargs):
    """`get_hf_objects` of MiniLM (or the checkpoint directory `checkpoint`) with a head for `df`'s labels,
    seeded by the caller."""
    from blurlite.hf_objects import get_hf_objects

    return get_hf_objects(checkpoint or common.minilm_dir(), config_kwargs={**label_config(df), **config_kwargs})


def train_blurlite(df, args, precision: str = "fp32", fused: bool = False, attention_dropout: float | None = None):
    """Fine-tune with `HFTextDataLoaders.from_df` + `hf_learner` + `fit_one_cycle`; returns (figures, learner).

    `attention_dropout=0.0` drops the checkpoint's dropout on attention probabilities (0.1), which keeps torch's
    CPU attention on its fused kernel (with dropout it falls back to the unfused path: a T x T matrix and random
    mask per head).
    """
    from blurlite.all import HFTextDataLoaders, hf_learner
    from blurlite.mixed_precision import hf_to_bf16

    common.set_seed(args.seed)
    config = {} if attention_dropout is None else {"attention_probs_dropout_prob": attention_dropout}
    dls = HFTextDataLoaders.from_df(df, minilm_objects(df, **config), text_col="text", label_col="label",
                                    valid_col="is_valid", bs=args.bs, max_length=args.max_length)
    meter = TrainMeter()
    learn = hf_learner(dls, cbs=meter, **({"opt_func": fused_adamw()} if fused else {}))
    if precision == "bf16":
        hf_to_bf16(learn)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, args.lr)
    fit_seconds = time.perf_counter() - start
    accuracy = learn.recorder.values[-1][learn.recorder.metric_names.index("accuracy") - 1]
    learn.remove_cb(meter)  # the learner goes on to the inference bench and export: leave it as users have it
    name = f"blurlite {precision}" + (" + fused AdamW" if fused else "")
    name += "" if attention_dropout is None else f", attention dropout {attention_dropout:g}"
    figures = dict(run=name, lengths=meter.lengths, padded=meter.padded,
                   epoch_s=meter.seconds, cpu_s=meter.cpu_seconds, fit_s=fit_seconds, accuracy=float(accuracy))
    return figures, learn


class _CountingCollator:
    "Wraps a collator to record the useful and padded tokens of the batches it makes while `counting`."

    def __init__(self, collator):
        self.collator, self.counting, self.lengths, self.padded = collator, True, [], 0

    def __call__(self, features):
        batch = self.collator(features)
        if self.counting:
            self.lengths += batch["attention_mask"].sum(1).tolist()
            self.padded += batch["attention_mask"].numel()
        return batch


def _trainer_items(df, tokenizer, max_length: int, label2id: dict) -> tuple[list, list]:
    "Training and validation rows as tokenized dicts with `labels`, unpadded (the collator pads)."
    enc = tokenizer(df.text.tolist(), truncation=True, max_length=max_length)
    items = [{**{k: enc[k][i] for k in enc.keys()}, "labels": label2id[label]} for i, label in enumerate(df.label)]
    is_valid = df.is_valid.to_numpy(dtype=bool)
    return [x for x, v in zip(items, is_valid) if not v], [x for x, v in zip(items, is_valid) if v]


def _training_arguments(args, out_dir: str, sampling: str, bf16: bool, **overrides):
    "The Trainer's settings of every bench; `overrides` (e.g. `use_cpu=False`, `num_train_epochs=2`) replace them."
    from transformers import TrainingArguments

    return TrainingArguments(**{
        "output_dir": out_dir, "use_cpu": True, "report_to": "none", "save_strategy": "no", "eval_strategy": "no",
        "logging_strategy": "no", "disable_tqdm": True, "dataloader_pin_memory": False, "seed": args.seed,
        "per_device_train_batch_size": args.bs, "per_device_eval_batch_size": args.bs, "num_train_epochs": 1,
        "learning_rate": args.lr, "lr_scheduler_type": "cosine", "warmup_steps": 0.25, "weight_decay": 0.01,
        "adam_beta1": 0.9, "adam_beta2": 0.99, "adam_epsilon": 1e-5, "max_grad_norm": 0.0,
        "train_sampling_strategy": sampling, "bf16": bf16, **overrides})


def trainer_epoch_timer():
    "A dict of the epochs' wall and CPU seconds, and the `TrainerCallback` class that fills it."
    from transformers import TrainerCallback

    epoch = {"seconds": 0.0, "cpu_seconds": 0.0}

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, *a, **k):
            epoch["start"], epoch["cpu_start"] = time.perf_counter(), time.process_time()

        def on_epoch_end(self, *a, **k):
            epoch["seconds"] += time.perf_counter() - epoch["start"]
            epoch["cpu_seconds"] += time.process_time() - epoch["cpu_start"]

    return epoch, EpochTimer


def fit_trainer(model, targs, train_items, valid_items, collator, tokenizer, callback) -> tuple[float, float]:
    "Train a `transformers.Trainer` (quietly), then predict the validation items: (fit seconds, accuracy)."
    from transformers import PrinterCallback, Trainer

    trainer = Trainer(model=model, args=targs, train_dataset=train_items, data_collator=collator,
                      processing_class=tokenizer, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # it prints the run's summary dict
    start = time.perf_counter()
    trainer.train()
    fit_seconds = time.perf_counter() - start
    collator.counting = False
    logits = trainer.predict(valid_items).predictions
    accuracy = float((np.argmax(logits, -1) == np.array([x["labels"] for x in valid_items])).mean())
    return fit_seconds, accuracy


def train_hf_trainer(df, args, sampling: str = "random", bf16: bool = False) -> dict:
    "Fine-tune with `transformers.Trainer` + `DataCollatorWithPadding`; returns the figures."
    from transformers import DataCollatorWithPadding

    common.set_seed(args.seed)  # as for blurlite: the new head starts from the same weights
    hf_objects = minilm_objects(df)
    tokenizer, model = hf_objects.hf_tokenizer, hf_objects.hf_model
    label2id = model.config.label2id
    train_items, valid_items = _trainer_items(df, tokenizer, args.max_length, label2id)
    collator = _CountingCollator(DataCollatorWithPadding(tokenizer))
    epoch, EpochTimer = trainer_epoch_timer()

    with tempfile.TemporaryDirectory() as out_dir:
        targs = _training_arguments(args, out_dir, sampling, bf16)
        fit_seconds, accuracy = fit_trainer(model, targs, train_items, valid_items, collator, tokenizer,
                                            EpochTimer())
    name = f"HF Trainer {'group_by_length' if sampling == 'group_by_length' else 'default'}{' bf16' if bf16 else ''}"
    return dict(run=name, lengths=collator.lengths, padded=collator.padded, epoch_s=epoch["seconds"],
                cpu_s=epoch["cpu_seconds"], fit_s=fit_seconds, accuracy=accuracy)


def summarise(figures: dict, dims: dict, gemm: dict) -> dict:
    "A table row: tokens, padding, speed, accuracy, achieved FLOP/s and its share of the GEMM rate."
    useful = sum(figures["lengths"])
    flops = common.useful_flops(figures["lengths"], dims, training=True)
    achieved = flops / figures["epoch_s"]
    bf16 = "bf16" in figures["run"]
    row = {"run": figures["run"], "useful tokens": useful, "padding share": 1 - useful / figures["padded"],
           "epoch s": figures["epoch_s"], "useful tok/s": useful / figures["epoch_s"],
           "CPU busy": figures["cpu_s"] / (figures["epoch_s"] * torch.get_num_threads()),
           "useful tok per CPU s": useful / figures["cpu_s"],
           "fit s (with valid)": figures["fit_s"], "valid accuracy": figures["accuracy"],
           "achieved GFLOP/s": achieved / 1e9, "/ fp32 GEMM": achieved / gemm["fp32"]}
    if bf16 and gemm.get("bf16"):
        row["/ bf16 GEMM"] = achieved / gemm["bf16"]
    return row


def jobs(df, args, native_bf16: bool, extras: bool) -> list[tuple[str, object]]:
    "(name, job) of every training run, in the order they run; bf16 runs only on a CPU with native bf16."
    runs = [("HF Trainer default", lambda: train_hf_trainer(df, args, "random")),
            ("HF Trainer group_by_length", lambda: train_hf_trainer(df, args, "group_by_length")),
            ("blurlite fp32", lambda: train_blurlite(df, args, "fp32"))]
    if native_bf16:
        runs += [("blurlite bf16", lambda: train_blurlite(df, args, "bf16"))]
    if extras:
        runs += [("blurlite fp32 + fused AdamW", lambda: train_blurlite(df, args, "fp32", fused=True))]
    if native_bf16 and extras:
        runs += [("blurlite bf16 + fused AdamW", lambda: train_blurlite(df, args, "bf16", fused=True)),
                 ("blurlite bf16 + fused AdamW, attention dropout 0",
                  lambda: train_blurlite(df, args, "bf16", fused=True, attention_dropout=0.0)),
                 ("HF Trainer default bf16", lambda: train_hf_trainer(df, args, "random", bf16=True))]
    return runs


def warm_up(df, args, bf16: bool) -> None:
    "A few untimed training steps at full batch size, so that the first timed run pays no one-off set-up costs."
    hf_objects = minilm_objects(df)
    batch = hf_objects.hf_tokenizer(df.text.tolist()[:args.bs], truncation=True, max_length=args.max_length,
                                    padding="max_length", return_tensors="pt")
    labels = torch.zeros(len(batch["input_ids"]), dtype=torch.long)
    hf_objects.hf_model.train()
    for enabled in [False] + ([True] if bf16 else []):
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                loss = hf_objects.hf_model(**batch, labels=labels).loss
            loss.backward()


def run(args, gemm: dict | None = None, extras: bool = True, only: str | None = None) -> dict:
    """Every training run, one after the other, in this process: rows, ratios, and the fp32 learner.

    `extras`: also fused AdamW and the Trainer in bf16. `only`: comma-separated parts of the run names to keep.
    """
    from blurlite.mixed_precision import cpu_bf16_support

    common.quiet_libraries()
    df = common.load_reviews(args)
    gemm = gemm or {"fp32": common.gemm_rate(torch.float32)}
    native_bf16 = cpu_bf16_support()[0]
    if not native_bf16:
        print("bf16 runs skipped: this CPU has no native bf16 (" + cpu_bf16_support()[1] + ")")
    warm_up(df, args, native_bf16)
    results, learner = [], None
    for name, job in jobs(df, args, native_bf16, extras):
        if only and not any(part.strip() in name for part in only.split(",")):
            continue
        print(f"training: {name} ...", flush=True)
        out = job()
        figures, learn = out if isinstance(out, tuple) else (out, None)
        if name == "blurlite fp32":  # the inference bench goes on with it
            learner = learn
        results.append(figures)
        print(f"  {figures['epoch_s']:.1f} s/epoch, {sum(figures['lengths']) / figures['epoch_s']:.0f} useful tok/s, "
              f"accuracy {figures['accuracy']:.3f}", flush=True)
    dims = common.model_dims(common.load_minilm_model() if learner is None else learner.model.hf_model)
    rows = [summarise(f, dims, gemm) for f in results]
    return {"rows": rows, "ratios": ratios(rows), "learner": learner, "dims": dims}


def ratios(rows: list[dict]) -> list[dict]:
    "Useful tokens/s of each run over the HF Trainer default's, and accuracy beside it."
    base = next((r for r in rows if r["run"] == "HF Trainer default"), None)
    if base is None:
        return []
    return [{"run": r["run"], "useful tok/s vs Trainer default": r["useful tok/s"] / base["useful tok/s"],
             "accuracy diff vs Trainer default": r["valid accuracy"] - base["valid accuracy"]} for r in rows]


def report(result: dict) -> str:
    "The training tables in Markdown."
    return (common.markdown_table(result["rows"]) + "\n\nRatios:\n\n" + common.markdown_table(result["ratios"]))


def main(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the fused-AdamW, attention-dropout-0 and Trainer bf16 runs")
    parser.add_argument("--only", help="comma-separated parts of run names to keep, e.g. 'blurlite'")
    args = common.parse_bench_args(parser, argv)
    result = run(args, extras=not args.no_extras, only=args.only)
    print(report(result))


if __name__ == "__main__":
    main()
