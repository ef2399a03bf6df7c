"""Optimizer step: fastai's `Adam` against blurlite's default `HFAdamW` (torch's fused AdamW) on MiniLM.

Counts the aten ops one step dispatches and times the step (median of repeats), then trains one epoch with each,
interleaved, and reports epoch seconds and validation accuracy side by side (same seed, same batches).

    python bench/optimizer_step.py [--quick]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import fastai.text.all  # noqa: E402,F401  (patches fit_one_cycle, no_bar)
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class CountOps(TorchDispatchMode):
    "Counts the aten ops dispatched inside it."

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def learner(df, args, opt_func):
    from blurlite.all import HFTextDataLoaders, hf_learner
    from train_speed import minilm_objects

    common.set_seed(args.seed)
    dls = HFTextDataLoaders.from_df(df, minilm_objects(df), valid_col="is_valid", bs=args.bs,
                                    max_length=args.max_length, seed=args.seed)
    return hf_learner(dls, opt_func=opt_func)


def step_figures(learn, repeats: int = 20) -> dict:
    "Ops and median seconds of one optimizer step, after a backward pass."
    x, y = learn.dls.one_batch()
    learn.opt = None
    learn.create_opt()
    learn.loss_func(learn.model(x).logits, y).backward()
    learn.opt.step()  # the first step also creates the optimizer's state: count a later one
    with CountOps() as counter:
        learn.opt.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        learn.opt.step()
        times.append(time.perf_counter() - start)
    learn.opt.zero_grad()
    n_tensors = sum(1 for p in learn.model.parameters() if p.requires_grad)
    return {"aten ops per step": counter.n, "parameter tensors": n_tensors, "step ms": 1e3 * statistics.median(times)}


def main(argv=None) -> dict:
    from fastai.optimizer import Adam

    from blurlite.optimizer import HFAdamW

    parser = common.bench_parser(__doc__.splitlines()[0])
    args = common.parse_bench_args(parser, argv)
    common.quiet_libraries()
    df = common.load_reviews(args)
    rows = []
    for name, opt_func in (("fastai Adam", Adam), ("HFAdamW (default)", HFAdamW)):
        learn = learner(df, args, opt_func)
        row = {"optimizer": name, **step_figures(learn)}
        learn = learner(df, args, opt_func)  # fresh weights: the same start for the training run
        start = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, args.lr)
        row["fit s"] = time.perf_counter() - start
        row["valid accuracy"] = float(learn.recorder.values[-1][learn.recorder.metric_names.index("accuracy") - 1])
        rows.append(row)
        print(f"{name}: {row}", flush=True)
    ratio = rows[0]["aten ops per step"] / rows[1]["aten ops per step"]
    print(common.markdown_table(rows))
    print(f"\nfastai Adam dispatches {ratio:.1f}x the ops of HFAdamW per step; step time "
          f"{rows[0]['step ms'] / rows[1]['step ms']:.2f}x; fit time {rows[0]['fit s'] / rows[1]['fit s']:.2f}x "
          f"(load average {common.os.getloadavg()[0]:.2f} on {common.os.cpu_count()} cores)")
    return {"rows": rows, "ops ratio": ratio}


if __name__ == "__main__":
    main()
