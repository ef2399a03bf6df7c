"""Thread settings: tokenizer parallelism (TOKENIZERS_PARALLELISM) and torch intra-op threads.

Tokenizes the reviews with and without the tokenizers library's own thread pool, and times a MiniLM forward +
backward pass of one full batch at 1 thread and at each larger count up to the machine's cores.

    python bench/threads.py --quick
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402


def _best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def tokenizer_parallelism(texts: list[str], tokenizer, max_length: int) -> list[dict]:
    "Seconds to tokenize `texts` in one batched call with TOKENIZERS_PARALLELISM true and false."
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    rows = []
    try:
        for value in ("true", "false"):  # the Rust side reads the variable at each call
            os.environ["TOKENIZERS_PARALLELISM"] = value
            seconds = _best_of(lambda: tokenizer(texts, truncation=True, max_length=max_length))
            rows.append({"setting": f"TOKENIZERS_PARALLELISM={value}", "what": f"tokenize {len(texts)} texts",
                         "s": seconds})
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    return rows


def torch_threads(hf_model, tokenizer, texts: list[str], args) -> list[dict]:
    "Seconds of one forward + backward pass of a `bs` x `max_length` batch at each thread count."
    batch = tokenizer(texts[:args.bs], truncation=True, max_length=args.max_length, padding="max_length",
                      return_tensors="pt")
    labels = torch.zeros(args.bs, dtype=torch.long)
    hf_model.train()

    def step():
        hf_model(**batch, labels=labels).loss.backward()
        hf_model.zero_grad(set_to_none=True)

    before, rows = torch.get_num_threads(), []
    try:
        for threads in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(threads)
            seconds = _best_of(step, repeats=2)
            rows.append({"setting": f"torch.set_num_threads({threads})",
                         "what": f"forward+backward, {args.bs} x {args.max_length} tokens", "s": seconds})
    finally:
        torch.set_num_threads(before)
    return rows


def run(args) -> list[dict]:
    from blurlite.hf_objects import get_hf_objects

    common.quiet_libraries()
    texts = common.load_reviews(args).text.tolist()
    hf_objects = get_hf_objects(common.minilm_dir(), config_kwargs={"num_labels": 2})
    return (tokenizer_parallelism(texts, hf_objects.hf_tokenizer, args.max_length)
            + torch_threads(hf_objects.hf_model, hf_objects.hf_tokenizer, texts, args))


def main(argv=None):
    args = common.parse_bench_args(common.bench_parser(__doc__.splitlines()[0]), argv)
    print(common.markdown_table(run(args)))


if __name__ == "__main__":
    main()
