"""Where a blurlite training step spends its time: phases (forward, backward, optimizer, data) and top ops.

Trains the longest `--steps` batches of the reviews for one epoch with `hf_learner`, in fp32 and in bf16 (when
the CPU has it natively), timing each phase of every training batch with a callback and recording
`torch.profiler` self CPU time per op.

    python bench/profile_step.py --quick
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import fastai.text.all  # noqa: E402,F401  (what users import first: patches fit, no_bar)
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


class PhaseTimer(Callback):
    "Wall time per phase of the training batches: each fastai event below closes one phase and opens the next."
    order = 99

    def before_fit(self):
        self.seconds, self.last = defaultdict(float), None

    def _mark(self, phase):
        now = time.perf_counter()
        if self.training and self.last is not None:
            self.seconds[self.last[0]] += now - self.last[1]
        self.last = (phase, now) if self.training else None

    def before_train(self): self.last = ("data", time.perf_counter())
    def before_batch(self): self._mark("forward")
    def after_pred(self): self._mark("loss")
    def after_loss(self): self._mark("backward")
    def after_backward(self): self._mark("optimizer step")
    def after_step(self): self._mark("zero_grad")
    def after_batch(self): self._mark("data")
    def after_train(self): self._mark("end")


class ProfileTraining(Callback):
    "Runs `torch.profiler` over the training batches only (not validation)."
    order = 98

    def before_train(self):
        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.prof.start()

    def after_train(self):
        self.prof.stop()


def profile_run(df, args, precision: str) -> tuple[dict, list[dict]]:
    "Phase seconds and the top ops by self CPU time for one epoch of `df`'s training rows."
    from blurlite.all import HFTextDataLoaders, hf_learner
    from blurlite.mixed_precision import hf_to_bf16

    common.set_seed(args.seed)
    dls = HFTextDataLoaders.from_df(df, common.minilm_dir(), text_col="text", label_col="label",
                                    valid_col="is_valid", bs=args.bs, max_length=args.max_length)
    timer, profiler = PhaseTimer(), ProfileTraining()
    learn = hf_learner(dls, cbs=[timer, profiler])
    if precision == "bf16":
        hf_to_bf16(learn)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, args.lr)
    events = profiler.prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
    ops = [{"run": f"blurlite {precision}", "op": e.key, "calls": e.count, "self CPU s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total} for e in top]
    return dict(timer.seconds), ops


def longest_rows(args):
    "The `steps * bs` longest training reviews (full-length batches, as most of an IMDB epoch is) and a few valid."
    df = common.load_reviews(args)
    train, valid = df[~df.is_valid], df[df.is_valid].head(args.bs)
    train = train.loc[train.text.str.len().sort_values(ascending=False).index[:args.steps * args.bs]]
    return pd.concat([train, valid], ignore_index=True)


def run(args) -> dict:
    from blurlite.mixed_precision import cpu_bf16_support

    common.quiet_libraries()
    df = longest_rows(args)
    phases, ops = [], []
    for precision in ["fp32"] + (["bf16"] if cpu_bf16_support()[0] else []):
        print(f"profiling: blurlite {precision}, {args.steps} training steps ...", flush=True)
        seconds, top = profile_run(df, args, precision)
        total = sum(seconds.values())
        phases += [{"run": f"blurlite {precision}", "phase": k, "s per step": v / args.steps, "share": v / total}
                   for k, v in seconds.items()]
        ops += top
    return {"phases": phases, "ops": ops}


def report(result: dict) -> str:
    return ("Phases of a training step (wall time):\n\n" + common.markdown_table(result["phases"])
            + "\n\nTop ops by self CPU time (profiler; CPU time adds up over threads):\n\n"
            + common.markdown_table(result["ops"]))


def add_profile_args(parser):
    parser.add_argument("--steps", type=int, default=6, help="training steps to profile")
    parser.add_argument("--top", type=int, default=12, help="ops to list")
    return parser


def main(argv=None):
    args = common.parse_bench_args(add_profile_args(common.bench_parser(__doc__.splitlines()[0])), argv)
    print(report(run(args)))


if __name__ == "__main__":
    main()
