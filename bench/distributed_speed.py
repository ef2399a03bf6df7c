"""Data-parallel training speed on CPU: blurlite 1 process x N threads against N processes x 1 thread (DDP, gloo).

MiniLM (all-MiniLM-L6-v2 with a new 2-class head) sequence classification on the IMDB sample, the split,
max_length, lr, seed and one epoch of `train_speed.py`. Three runs, one after the other, each in its own process
tree launched from here (so that every run pays the same start-up and none inherits another's thread pools):

  a) blurlite, 1 process x N torch threads, plain `learn.fit_one_cycle` (no `distrib_ctx`), batch size `bs`;
  b) blurlite, `torchrun --standalone --nproc_per_node N`, 1 thread per process,
     `with learn.distrib_ctx(): learn.fit_one_cycle(1, lr)`;
  c) the HF `Trainer` under the same torchrun, `TrainingArguments(use_cpu=True, ...)`, `DataCollatorWithPadding`,
     the hyper-parameters of `train_speed.train_hf_trainer`.

Batch size: under DDP every process takes its own batch and the gradients are averaged over the processes, so the
global batch is per-process bs x N. (b) and (c) run with per-process bs = bs / N (8 for bs 16 and N 2): the same
global batch, number of optimiser steps and learning-rate schedule as (a). `--ddp-bs` overrides it.

Figures: the training epoch's wall time on rank 0 (the training batches only: from fastai's `before_train` to
`after_train`, the Trainer's `on_epoch_begin` to `on_epoch_end`; no model loading, tokenization or validation),
the useful (attention-mask) tokens of the training batches summed over the ranks, and the validation accuracy on
the full validation split, computed the same way for every run: after training, outside DDP, rank 0 alone runs the
trained model in eval mode over every validation review (tokenizer, truncation at max_length, batches of bs padded
per batch) and compares the argmax with the label. blurlite's own validation accuracy of the epoch (fastai's
recorder; in (b) computed inside `distrib_ctx` by blurlite's distributed path) is recorded beside it as a check. Every rank also writes a checksum of its final weights:
ranks that did not end identical (no DDP) are flagged. Each process first runs two untimed training steps on a
separate copy of the model (`train_speed.warm_up`), so that the timed epoch pays no one-off set-up.

    python bench/distributed_speed.py --quick                 # smoke run (tiny sizes; not a measurement)
    python bench/distributed_speed.py --out dist.json         # full size: 800 / 200 reviews, max_length 256
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# blurlite from this checkout, for this process and the workers, even where the installed (editable) copy
# points elsewhere
sys.path.insert(1, str(common.ROOT))

RUNS = {
    "a": dict(name="blurlite 1 process", framework="blurlite", distributed=False),
    "b": dict(name="blurlite DDP (distrib_ctx)", framework="blurlite", distributed=True),
    "c": dict(name="HF Trainer DDP", framework="trainer", distributed=True),
}


# ---------------------------------------------------------------------------------------------------------------
# worker: one process of a run (launched by `launch`, under plain python or torchrun)
# ---------------------------------------------------------------------------------------------------------------
def _checksum(model) -> str:
    "SHA-256 of the model's state dict: equal on every rank after a synchronised (DDP) fit."
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def valid_accuracy(model, tokenizer, texts: list, labels: list, names: list, max_length: int, bs: int) -> float:
    "Accuracy of `model` (an HF classifier; output i is label `names[i]`) on `texts`, in this process alone."
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            enc = tokenizer(texts[i:i + bs], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            predicted = model(**enc).logits.argmax(-1).tolist()
            correct += sum(str(names[p]) == str(label) for p, label in zip(predicted, labels[i:i + bs]))
    return correct / len(texts)


def _blurlite_worker(df, args, rank: int, world: int) -> dict:
    "One process of run (a) or (b): `HFTextDataLoaders.from_df` + `hf_learner` + `fit_one_cycle`."
    import train_speed
    from blurlite.all import HFTextDataLoaders, hf_learner

    class RankMeter(train_speed.TrainMeter):
        "`TrainMeter` (tokens, epoch time) plus what the fit ran on: model and loader classes, batches."

        def before_fit(self):
            super().before_fit()
            self.batches, self.model_class, self.dl_class = 0, None, None

        def before_train(self):
            self.model_class, self.dl_class = type(self.learn.model).__name__, type(self.dl).__name__
            super().before_train()

        def before_batch(self):
            super().before_batch()
            self.batches += self.training

    common.set_seed(args.seed)  # same head on every rank (DDP broadcasts rank 0's weights at the wrap anyway)
    hf_objects = train_speed.minilm_objects(df)
    dls = HFTextDataLoaders.from_df(df, hf_objects, text_col="text", label_col="label", valid_col="is_valid",
                                    bs=args.worker_bs, max_length=args.max_length)
    meter = RankMeter()
    learn = hf_learner(dls, cbs=meter)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        if world > 1:
            with learn.distrib_ctx():
                learn.fit_one_cycle(1, args.lr)
        else:
            learn.fit_one_cycle(1, args.lr)
    fit_seconds = time.perf_counter() - start
    fit_accuracy = learn.recorder.values[-1][learn.recorder.metric_names.index("accuracy") - 1]
    figures = dict(lengths=meter.lengths, padded=meter.padded, batches=meter.batches, epoch_s=meter.seconds,
                   cpu_s=meter.cpu_seconds, fit_s=fit_seconds, fit_accuracy=float(fit_accuracy),
                   model_class=meter.model_class, dl_class=meter.dl_class, checksum=_checksum(learn.model))
    if rank == 0:  # after the ctx: the plain model, every validation review, this process alone
        valid = df[df.is_valid]
        figures["accuracy"] = valid_accuracy(learn.model.hf_model, hf_objects.hf_tokenizer, valid.text.tolist(),
                                             valid.label.tolist(), list(learn.dls.vocab), args.max_length, args.bs)
    return figures


def _trainer_worker(df, args, rank: int, world: int) -> dict:
    "One process of run (c): `transformers.Trainer` as `train_speed.train_hf_trainer`, per-process bs `worker_bs`."
    import train_speed
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer

    class Collator(train_speed._CountingCollator):
        "Counts useful and padded tokens, and batches, of this rank's training batches."
        batches = 0

        def __call__(self, features):
            self.batches += self.counting
            return super().__call__(features)

    common.set_seed(args.seed)
    hf_objects = train_speed.minilm_objects(df)
    tokenizer, model = hf_objects.hf_tokenizer, hf_objects.hf_model
    train_items, _ = train_speed._trainer_items(df, tokenizer, args.max_length, model.config.label2id)
    collator = Collator(DataCollatorWithPadding(tokenizer))
    epoch, EpochTimer = train_speed.trainer_epoch_timer()

    per_process = argparse.Namespace(**{**vars(args), "bs": args.worker_bs})
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(model=model, args=train_speed._training_arguments(per_process, out_dir, "random", False),
                          train_dataset=train_items, data_collator=collator, processing_class=tokenizer,
                          callbacks=[EpochTimer()])
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        fit_seconds = time.perf_counter() - start
        collator.counting = False
    figures = dict(lengths=collator.lengths, padded=collator.padded, batches=collator.batches,
                   epoch_s=epoch["seconds"], cpu_s=epoch["cpu_seconds"], fit_s=fit_seconds,
                   model_class=type(trainer.model_wrapped).__name__,
                   distributed_type=str(trainer.accelerator.distributed_type), checksum=_checksum(trainer.model))
    if rank == 0:
        valid = df[df.is_valid]
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        figures["accuracy"] = valid_accuracy(trainer.model, tokenizer, valid.text.tolist(), valid.label.tolist(),
                                             names, args.max_length, args.bs)
    return figures


def worker(args) -> None:
    "Train as one process of a run; write this rank's figures to `rank_dir/rank<R>.json`; leave gloo together."
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    torch.set_num_threads(args.worker_threads)
    common.quiet_libraries()
    import fastai.text.all  # noqa: F401  (what users import first)

    df = common.load_reviews(args)
    import train_speed

    # two untimed steps on a separate copy of the model: the epoch then pays no one-off set-up (as train_speed)
    train_speed.warm_up(df, argparse.Namespace(**{**vars(args), "bs": args.worker_bs}), bf16=False)
    job = _blurlite_worker if args.worker == "blurlite" else _trainer_worker
    figures = job(df, args, rank, world)
    figures.update(rank=rank, world=world, torch_threads=torch.get_num_threads(),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "unset"), per_process_bs=args.worker_bs,
                   dist_backend=dist.get_backend() if dist.is_available() and dist.is_initialized() else None)
    (Path(args.rank_dir) / f"rank{rank}.json").write_text(json.dumps(figures))
    if dist.is_available() and dist.is_initialized():
        # every rank shuts gloo down together: a rank exiting while another's gloo threads still run aborts it
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# driver: launch each run, gather the ranks' figures
# ---------------------------------------------------------------------------------------------------------------
def launch(key: str, args, rank_dir: Path) -> dict:
    "Run `key` as its own process tree; its ranks' figures, the launch-to-exit time, and the log tail on failure."
    spec = RUNS[key]
    nproc = args.nproc if spec["distributed"] else 1
    threads = 1 if spec["distributed"] else args.nproc
    worker_bs = args.ddp_bs if spec["distributed"] else args.bs
    worker_args = [str(Path(__file__).resolve()), "--worker", spec["framework"], "--rank-dir", str(rank_dir),
                   "--worker-bs", str(worker_bs), "--worker-threads", str(threads), "--data", str(args.data),
                   "--n-train", str(args.n_train), "--n-valid", str(args.n_valid),
                   "--max-length", str(args.max_length), "--bs", str(args.bs), "--lr", repr(args.lr),
                   "--seed", str(args.seed)]
    if spec["distributed"]:  # --standalone: a local rendezvous on a free port chosen by torchrun
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc_per_node", str(nproc), *worker_args]
    else:
        command = [sys.executable, *worker_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("ACCELERATE_USE_CPU", None)  # CPU mode comes from blurlite (b) and `use_cpu=True` (c)
    rank_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a timeout ends the whole tree
    try:
        log, _ = proc.communicate(timeout=args.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            log, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - start
    ranks = [json.loads((rank_dir / f"rank{r}.json").read_text()) for r in range(nproc)
             if (rank_dir / f"rank{r}.json").exists()]
    out = dict(key=key, **spec, nproc=nproc, threads=threads, per_process_bs=worker_bs, global_bs=worker_bs * nproc,
               command=" ".join(command[:8] if spec["distributed"] else command[:4]) + " ...",
               returncode=proc.returncode, timed_out=timed_out, launch_s=wall, load_before=load_before,
               load_after=os.getloadavg(), ranks=ranks)
    if proc.returncode != 0 or len(ranks) != nproc:
        out["log_tail"] = log[-6000:]
    return out


def summarise(run: dict) -> dict:
    "A table row for one run (or its failure)."
    row = {"run": f"({run['key']}) {run['name']}", "processes x threads": f"{run['nproc']} x {run['threads']}",
           "bs per process (global)": f"{run['per_process_bs']} ({run['global_bs']})"}
    ranks = run["ranks"]
    if run["returncode"] != 0 or len(ranks) != run["nproc"]:
        why = "timed out" if run["timed_out"] else f"exit {run['returncode']}, {len(ranks)}/{run['nproc']} ranks wrote"
        return {**row, "status": f"FAILED ({why})"}
    rank0 = next(r for r in ranks if r["rank"] == 0)
    useful = sum(sum(r["lengths"]) for r in ranks)
    padded = sum(r["padded"] for r in ranks)
    cpu = sum(r["cpu_s"] for r in ranks)
    synced = len({r["checksum"] for r in ranks}) == 1
    row.update({
        "status": "ok" if synced else "ranks' weights differ (no DDP?)",
        "steps (rank 0)": rank0["batches"], "useful tokens (all ranks)": useful,
        "padding share": 1 - useful / padded,
        "epoch s (rank 0)": rank0["epoch_s"], "slowest rank epoch s": max(r["epoch_s"] for r in ranks),
        "useful tok/s": useful / rank0["epoch_s"],
        "CPU busy": cpu / (rank0["epoch_s"] * run["nproc"] * run["threads"]),
        "valid accuracy": rank0["accuracy"], "launch-to-exit s": run["launch_s"],
        "model in fit": rank0.get("model_class"),
    })
    if "fit_accuracy" in rank0:
        row["fastai recorder accuracy"] = rank0["fit_accuracy"]
    return row


def ratios(rows: list[dict]) -> list[dict]:
    "Each run against (a): useful tokens/s, epoch time, accuracy."
    base = next((r for r in rows if r["run"].startswith("(a)") and "useful tok/s" in r), None)
    if base is None:
        return []
    return [{"run": r["run"], "useful tok/s vs (a)": r["useful tok/s"] / base["useful tok/s"],
             "epoch speed-up vs (a) (a's s / this s)": base["epoch s (rank 0)"] / r["epoch s (rank 0)"],
             "accuracy diff vs (a)": r["valid accuracy"] - base["valid accuracy"]}
            for r in rows if "useful tok/s" in r]


def run(args) -> dict:
    """Every selected run, one after the other, each its own process tree: runs (raw), rows, ratios, settings.

    `args`: `common.bench_parser`'s arguments; this bench's own (nproc, ddp_bs, only, timeout) default when absent,
    so another bench's arguments (run_all's) do.
    """
    args = argparse.Namespace(**{**dict(nproc=2, ddp_bs=None, only=None, timeout=None), **vars(args)})
    args.timeout = args.timeout or (600 if args.quick else 1800)
    if args.ddp_bs is None:
        if args.bs % args.nproc:
            sys.exit(f"bs {args.bs} is not a multiple of --nproc {args.nproc}: pass --ddp-bs")
        args.ddp_bs = args.bs // args.nproc
    settings = {k: getattr(args, k) for k in ("n_train", "n_valid", "max_length", "bs", "ddp_bs", "nproc", "lr",
                                              "seed")}
    settings["data"] = str(args.data)
    common.quiet_libraries()
    keys = [k.strip() for k in args.only.split(",")] if args.only else list(RUNS)
    batch_note = (f"(a) bs {args.bs} in 1 process; (b), (c) bs {args.ddp_bs} per process x {args.nproc} processes "
                  f"= global batch {args.ddp_bs * args.nproc}")
    if args.ddp_bs * args.nproc == args.bs:
        batch_note += (": DDP averages the gradients over the processes, so the global batch, the number of "
                       "optimiser steps and the lr schedule match (a)")
    else:
        batch_note += f": NOT (a)'s batch of {args.bs}; steps and lr schedule differ from (a)"
    print("batch size:", batch_note, flush=True)
    machine = common.machine_info()  # the driver's: each run's own threads are in its rows and ranks
    runs = []
    with tempfile.TemporaryDirectory(prefix="blurlite-distributed-speed-") as tmp:
        for key in keys:
            print(f"training: ({key}) {RUNS[key]['name']} ...", flush=True)
            result = launch(key, args, Path(tmp) / key)
            runs.append(result)
            row = summarise(result)
            if "useful tok/s" in row:
                print(f"  {row['epoch s (rank 0)']:.1f} s/epoch, {row['useful tok/s']:.0f} useful tok/s, "
                      f"accuracy {row['valid accuracy']:.3f}, {row['status']}", flush=True)
            else:
                print(f"  {row['status']}\n{result.get('log_tail', '')}", flush=True)
    rows = [summarise(r) for r in runs]
    return {"settings": settings, "batch_note": batch_note, "machine": machine, "runs": runs,
            "rows": rows, "ratios": ratios(rows)}


def report(result: dict) -> str:
    "The tables in Markdown, with how each figure was taken."
    notes = [
        f"Settings: {result['settings']}, 1 epoch. Batch size: {result['batch_note']}.",
        "Epoch s: rank 0's training batches only (no model loading, tokenization or validation); useful tokens: "
        "attention-mask sum of the training batches summed over the ranks (including any items the distributed "
        "loaders repeat so that every rank takes as many steps: work done all the same); useful tok/s = useful tokens / rank 0's epoch s. "
        "CPU busy = CPU time of all ranks over the epoch / (epoch s x processes x threads).",
        "Valid accuracy: after training, outside DDP, rank 0 alone runs the trained model over the full validation "
        "split (same code for every run). fastai recorder accuracy: blurlite's own end-of-epoch validation, in (b) "
        "inside distrib_ctx (as blurlite's distributed path computes it); it should equal valid accuracy.",
        "Launch-to-exit s: the whole process tree, imports, model loading and torchrun start-up included.",
    ]
    failed = [r for r in result["runs"] if "log_tail" in r]
    text = (common.markdown_table(result["rows"]) + "\n\nRatios vs (a):\n\n" + common.markdown_table(result["ratios"])
            + "\n\n" + "\n".join(f"- {n}" for n in notes))
    for r in failed:
        text += f"\n\n({r['key']}) {r['name']} failed; the end of its log:\n\n```\n{r['log_tail'][-3000:]}\n```"
    return text


def main(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2,
                        help="processes of (b) and (c), each 1 thread; (a) runs 1 process with this many threads")
    parser.add_argument("--ddp-bs", type=int, default=None,
                        help="per-process batch size of (b) and (c) (default bs / nproc: the same global batch)")
    parser.add_argument("--only", help="comma-separated runs to do, of a, b, c (default all)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default 1800; 600 --quick)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of every figure (default a temporary file)")
    # the worker's arguments (set by `launch`)
    parser.add_argument("--worker", choices=["blurlite", "trainer"], help=argparse.SUPPRESS)
    parser.add_argument("--rank-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker-bs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    args = common.parse_bench_args(parser, argv)
    if args.worker:
        return worker(args)
    result = run(args)
    text = report(result)
    print(text)
    if args.out is None:
        fd, name = tempfile.mkstemp(prefix="blurlite-distributed-speed-", suffix=".json")
        os.close(fd)
        args.out = Path(name)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
