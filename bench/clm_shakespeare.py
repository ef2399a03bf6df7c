"""Causal LM from scratch on tinyshakespeare: blurlite vs the HF Trainer at the same budget (validation perplexity,
training tokens/s), and `learn.generate` vs `pipeline("text-generation")` on the saved artifact, in one run (issue 24).

A byte-level BPE tokenizer is trained on the training paragraphs (`train_bpe_tokenizer`); a small GPT-2 is built
from a config (`get_hf_objects(..., pretrained=False)`). The file's blank-line-separated speeches are the texts;
the last 10% are validation (contiguous, as nanoGPT splits it). Both runs start from the same weights, see the same
packed blocks (`pack_texts`: each speech ends with <|endoftext|>) for the same epochs, batch size and peak lr:
  a) blurlite: `HFCausalLMDataLoaders.from_df` + `hf_learner` + `fit_one_cycle` (HFAdamW, one-cycle schedule);
  b) the HF Trainer on the same blocks (labels = input ids, as the course), AdamW with a cosine schedule and 25%
     warm-up (the benches' Trainer settings). The Trainer gets the full blocks only (the course's `group_texts`
     drops the last partial block: one block of the thousands).
Both are scored by the same code: `learn.validate()` (perplexity over every validation token, next-token accuracy).
c) Generation: greedy and beam search on prompts, `learn.generate` vs the pipeline on the artifact: equal texts?

Run: python bench/clm_shakespeare.py [--epochs 2] [--quick]   (CPU, 2 cores: about 10 minutes; --quick: 1 minute)
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets HF_HUB_OFFLINE before transformers loads)

import torch  # noqa: E402

DATA = common.ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
PROMPTS = ["ROMEO:\n", "First Citizen:\nWe are", "KING RICHARD III:\nNow is the"]


def parse_args(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.set_defaults(lr=2e-3, bs=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="runs of each, seeds 0.. (the data order and dropout "
                                                             "differ; the initial weights are the same)")
    args = parser.parse_args(argv)
    args.fraction = 0.15 if args.quick else 1.0
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def frame(args):
    import pandas as pd

    from blurlite.all import read_texts

    texts, _ = read_texts(DATA)
    texts = texts[: int(len(texts) * args.fraction)]
    n_valid = len(texts) // 10
    return pd.DataFrame({"text": texts, "is_valid": [False] * (len(texts) - n_valid) + [True] * n_valid})


def build(df, args, tmp: Path):
    "Tokenizer trained on the training texts, a new GPT-2 from a config, and its initial weights."
    from transformers import AutoModelForCausalLM, GPT2Config

    from blurlite.all import get_hf_objects, train_bpe_tokenizer

    train_bpe_tokenizer(df.text[~df.is_valid], vocab_size=args.vocab_size).save_pretrained(tmp / "tokenizer")
    config = GPT2Config(n_embd=args.n_embd, n_layer=args.n_layer, n_head=4, n_positions=args.block_size,
                        vocab_size=args.vocab_size)
    common.set_seed(args.seed)
    objects = get_hf_objects(tmp / "tokenizer", model_cls=AutoModelForCausalLM, config=config, pretrained=False)
    init = {k: v.clone() for k, v in objects.hf_model.state_dict().items()}
    return objects, init


def blurlite_run(df, objects, args):
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401
    from fastai.torch_core import set_seed

    from blurlite.all import HFCausalLMDataLoaders, hf_learner

    import train_speed

    set_seed(args.seed)
    dls = HFCausalLMDataLoaders.from_df(df, objects, block_size=args.block_size, valid_col="is_valid", bs=args.bs)
    learn = hf_learner(dls)
    meter = train_speed.TrainMeter()  # the training phases only (the Trainer validates nothing while it trains)
    with learn.no_bar(), learn.no_logging():
        start_ppl = learn.validate()[1]
        start = time.perf_counter()
        learn.fit_one_cycle(args.epochs, args.lr, cbs=[meter])
        fit_s = time.perf_counter() - start
        loss, ppl, acc = learn.validate()
    return dict(run="blurlite", blocks=len(dls.train_ds), fit_s=fit_s, train_s=meter.seconds,
                tok_s=sum(meter.lengths) / meter.seconds, valid_loss=loss, perplexity=ppl, accuracy=acc,
                start_perplexity=start_ppl), learn


def trainer_run(learn, init, args) -> dict:
    "The HF Trainer on the same full blocks from the same weights; scored by `learn.validate()` with its weights."
    from fastai.torch_core import set_seed
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator

    import train_speed
    from blurlite.all import hf_learner

    ds = learn.dls.train_ds
    blocks = [ds[i][0]["input_ids"].tolist() for i in range(len(ds))]
    items = [{"input_ids": b, "attention_mask": [1] * len(b), "labels": b} for b in blocks if len(b) == args.block_size]
    model = AutoModelForCausalLM.from_config(learn.model.hf_model.config)
    model.load_state_dict(init)
    set_seed(args.seed)
    epoch, EpochTimer = train_speed.trainer_epoch_timer()
    with tempfile.TemporaryDirectory() as out:
        targs = train_speed._training_arguments(args, out, "random", False, num_train_epochs=args.epochs)
        trainer = Trainer(model=model, args=targs, train_dataset=items, data_collator=default_data_collator,
                          callbacks=[EpochTimer()])
        start = time.perf_counter()
        trainer.train()
        fit_s = time.perf_counter() - start
    scorer = hf_learner(learn.dls, model)
    with scorer.no_bar(), scorer.no_logging():
        loss, ppl, acc = scorer.validate()
    tokens = len(items) * args.block_size * args.epochs  # every block: the Trainer keeps the last, partial batch
    return dict(run="HF Trainer", blocks=len(items), fit_s=fit_s, train_s=epoch["seconds"],
                tok_s=tokens / epoch["seconds"], valid_loss=loss, perplexity=ppl, accuracy=acc)


def generation_run(learn, tmp: Path) -> dict:
    "`learn.generate` vs the pipeline on the saved artifact: greedy and beam search; seconds; samples."
    from fastai.torch_core import set_seed
    from transformers import pipeline

    path = learn.save_pretrained(tmp / "artifact")
    pipe = pipeline("text-generation", model=str(path))
    row = {}
    for name, settings in (("greedy", dict(do_sample=False)), ("beam 4", dict(do_sample=False, num_beams=4))):
        start = time.perf_counter()
        ours = learn.generate(PROMPTS, max_new_tokens=40, **settings)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = [pipe(p, max_new_tokens=40, **settings) for p in PROMPTS]
        row[name] = {"equal": ours == theirs, "blurlite s": ours_s, "pipeline s": time.perf_counter() - start}
    set_seed(0)
    row["samples"] = [r[0]["generated_text"] for r in learn.generate(PROMPTS, max_new_tokens=60, do_sample=True,
                                                                      temperature=0.8)]
    return row


def main(argv=None):
    args = parse_args(argv)
    common.quiet_libraries()
    print(json.dumps(common.machine_info()), flush=True)
    df = frame(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        objects, init = build(df, args, tmp)
        n_params = sum(p.numel() for p in objects.hf_model.parameters())
        print(f"{(~df.is_valid).sum()} training / {df.is_valid.sum()} validation speeches; GPT-2 {n_params / 1e6:.2f}M "
              f"parameters, vocab {args.vocab_size}, blocks of {args.block_size}, bs {args.bs}, lr {args.lr}, "
              f"{args.epochs} epochs, {torch.get_num_threads()} threads", flush=True)
        rows = []
        for seed in range(args.seeds):  # alternating, so that a change of machine load falls on both
            args.seed = seed
            objects.hf_model.load_state_dict(init)
            ours, learn = blurlite_run(df, objects, args)
            rows.append({**ours, "seed": seed})
            print(json.dumps(rows[-1]), flush=True)
            if not args.skip_trainer:
                rows.append({**trainer_run(learn, init, args), "seed": seed})
                print(json.dumps(rows[-1]), flush=True)
        print("\n| run | seed | training blocks | fit s (training s) | training tokens/s | valid loss | perplexity | "
              "next-token accuracy |\n|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['seed']} | {r['blocks']} | {r['fit_s']:.0f} ({r['train_s']:.0f}) | {r['tok_s']:.0f} | "
                  f"{r['valid_loss']:.3f} | {r['perplexity']:.1f} | {r['accuracy']:.3f} |")
        print(f"\nperplexity before training: {ours['start_perplexity']:.0f}")
        means = {}
        for run in ("blurlite", "HF Trainer"):
            mine = [r for r in rows if r["run"] == run]
            if mine:
                means[run] = {k: sum(r[k] for r in mine) / len(mine) for k in ("tok_s", "perplexity", "accuracy")}
                each = ", ".join(f"{r['perplexity']:.1f}" for r in mine)
                print(f"{run}, mean of {len(mine)}: perplexity {means[run]['perplexity']:.1f} (runs: {each}), "
                      "next-token accuracy "
                      f"{means[run]['accuracy']:.3f}, {means[run]['tok_s']:.0f} tokens/s")
        if len(means) == 2:
            print(f"blurlite / Trainer training tokens/s: {means['blurlite']['tok_s'] / means['HF Trainer']['tok_s']:.2f}x")
        print("\n" + json.dumps(generation_run(learn, tmp), indent=1))


if __name__ == "__main__":
    main()
