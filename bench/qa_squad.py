"""Question answering on real SQuAD questions: blurlite vs the HF Trainer at the same budget, and `learn.answer`
vs transformers 4.57.6's `pipeline("question-answering")` (answers and speed), side by side in one run (issue 23).

MiniLM (all-MiniLM-L6-v2, no QA training) fine-tuned on one article's questions (University_of_Notre_Dame, SQuAD
train, 269) and validated on another's (Super_Bowl_50, SQuAD dev, 810, up to 3 references each):
  a) blurlite: `HFQADataLoaders.from_df` + `hf_learner` + `fit_one_cycle` (HFAdamW, one-cycle schedule);
  b) the HF Trainer on the HF course's features (`prepare_train_features`: the same windows, the same labels),
     `DataCollatorWithPadding`, AdamW with a cosine schedule and 25% warm-up (the benches' Trainer settings),
     the same epochs, batch size and peak lr, the head starting from the same weights;
both scored by the same code: SQuAD exact match / F1 of the span search over every window of each question
(`learn.validate()`; the Trainer's model is put in a blurlite learner for it).
c) Inference: the trained artifact answers the 810 validation questions with `learn.answer` (one call) and with
   transformers 4.57.6's pipeline (the last release that has it: installed with `pip install --target` into
   `--tf4` and run in a subprocess), same `max_seq_len`/`doc_stride`/`max_answer_len`: answers compared, seconds.

Run: python bench/qa_squad.py [--epochs 2] [--quick]   (CPU: about 15 minutes in full; --quick: 2 minutes)
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
import common  # noqa: E402  (sets HF_HUB_OFFLINE before transformers loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATA = common.ROOT.parent / "shared" / "data"
TRAIN, VALID = DATA / "squad_v1_notre_dame.json", DATA / "squad_v1_super_bowl_50.json"

PIPELINE_SCRIPT = """
import json, sys, time
import transformers
from transformers import pipeline
path, questions_file, out_file, max_seq_len, doc_stride, max_answer_len = sys.argv[1:7]
items = json.load(open(questions_file))
pipe = pipeline("question-answering", model=path, device="cpu")
start = time.perf_counter()
answers = [pipe(question=q, context=c, max_seq_len=int(max_seq_len), doc_stride=int(doc_stride),
                max_answer_len=int(max_answer_len)) for q, c in items]
seconds = time.perf_counter() - start
json.dump({"version": transformers.__version__, "seconds": seconds, "answers": answers}, open(out_file, "w"))
"""


def parse_args(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.set_defaults(max_length=384, lr=1e-4, bs=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--tf4", type=Path, default=Path(tempfile.gettempdir()) / "transformers-4.57.6",
                        help="where transformers 4.57.6 is (or gets) installed with pip install --target")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_valid, args.max_length, args.stride = 64, 96, 256, 64
    else:
        args.n_train, args.n_valid = 10_000, 10_000
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def frames(args):
    from blurlite.all import squad_to_df

    train, valid = squad_to_df(TRAIN).head(args.n_train), squad_to_df(VALID).head(args.n_valid)
    return train, valid


def blurlite_run(train, valid, args) -> tuple[dict, object]:
    "Fine-tune with blurlite; the figures and the learner."
    import pandas as pd
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401
    from fastai.torch_core import set_seed

    from blurlite.all import HFQADataLoaders, hf_learner

    df = pd.concat([train.assign(is_valid=False), valid.assign(is_valid=True)], ignore_index=True)
    set_seed(args.seed)
    dls = HFQADataLoaders.from_df(df, common.minilm_dir(), valid_col="is_valid", bs=args.bs,
                                  max_length=args.max_length, stride=args.stride)
    set_seed(args.seed)
    learn = hf_learner(dls, dls.hf_model)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs, args.lr)
        fit_s = time.perf_counter() - start
        loss, em, f1 = learn.validate()
    tokens = sum(int(np.sum(w)) for w in dls.train.window_lengths) * args.epochs
    return dict(run="blurlite", windows=dls.train.n, fit_s=fit_s, tok_s=tokens / fit_s, valid_loss=loss, em=em,
                f1=f1), learn


def course_features(df, tokenizer, max_length: int, stride: int) -> list[dict]:
    "The HF course's `prepare_train_features`: windows of question + context, labelled with the answer's tokens."
    enc = tokenizer(list(df.question), list(df.context), truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        answers = df.answers.iloc[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        start_pos = end_pos = 0
        if answers["text"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            ctx_start, ctx_end = seq.index(1), len(seq) - 1 - seq[::-1].index(1)
            if offsets[ctx_start][0] <= start_char and offsets[ctx_end][1] >= end_char:
                idx = ctx_start
                while idx <= ctx_end and offsets[idx][0] <= start_char:
                    idx += 1
                start_pos = idx - 1
                idx = ctx_end
                while idx >= ctx_start and offsets[idx][1] >= end_char:
                    idx -= 1
                end_pos = idx + 1
        features.append({k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids")} |
                        {"start_positions": start_pos, "end_positions": end_pos})
    return features


def trainer_run(train, learn, args) -> dict:
    "Fine-tune MiniLM with the HF Trainer at the same budget; scored by `learn.validate()` with its weights."
    from fastai.torch_core import set_seed
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, Trainer

    import train_speed
    from blurlite.all import find_hf_transform, hf_learner

    tokenizer = find_hf_transform(learn.dls).hf_tokenizer
    set_seed(args.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(common.minilm_dir(), dtype=torch.float32)
    features = course_features(train, tokenizer, args.max_length, args.stride)
    epoch, EpochTimer = train_speed.trainer_epoch_timer()
    with tempfile.TemporaryDirectory() as out:
        targs = train_speed._training_arguments(args, out, "random", False, num_train_epochs=args.epochs)
        trainer = Trainer(model=model, args=targs, train_dataset=features, data_collator=DataCollatorWithPadding(tokenizer),
                          callbacks=[EpochTimer()])
        start = time.perf_counter()
        trainer.train()
        fit_s = time.perf_counter() - start
    scorer = hf_learner(learn.dls, model)
    with scorer.no_bar(), scorer.no_logging():
        loss, em, f1 = scorer.validate()
    tokens = sum(len(f["input_ids"]) for f in features) * args.epochs
    return dict(run="HF Trainer", windows=len(features), fit_s=fit_s, tok_s=tokens / fit_s, valid_loss=loss, em=em,
                f1=f1)



def inference_run(learn, valid, args) -> dict:
    "`learn.answer` over the validation questions vs 4.57.6's pipeline on the saved artifact."
    items = list(zip(valid.question, valid.context))
    start = time.perf_counter()
    ours = learn.answer([q for q, _ in items], [c for _, c in items])
    ours_s = time.perf_counter() - start
    windows = sum(len(find_windows(learn, q, c)) for q, c in items)
    row = {"questions": len(items), "windows": windows, "blurlite answer s": ours_s}
    if args.skip_pipeline:
        return row
    common.ensure_tf4(args.tf4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        learn.save_pretrained(tmp / "artifact")
        (tmp / "questions.json").write_text(json.dumps(items))
        env = {**os.environ, "PYTHONPATH": str(args.tf4), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(tmp / "artifact"), str(tmp / "questions.json"),
                        str(tmp / "answers.json"), str(args.max_length), str(args.stride), "15"], env=env, check=True)
        theirs = json.loads((tmp / "answers.json").read_text())
    same = sum((a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"])
               for a, b in zip(ours, theirs["answers"]))
    worst = max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs["answers"]))
    long_contexts = [i for i, (q, c) in enumerate(items) if len(find_windows(learn, q, c)) > 1]  # several windows
    same_long = sum((ours[i]["answer"], ours[i]["start"]) == (theirs["answers"][i]["answer"],
                                                              theirs["answers"][i]["start"]) for i in long_contexts)
    row.update({"pipeline": f"transformers {theirs['version']}", "pipeline s": theirs["seconds"],
                "speed-up": theirs["seconds"] / ours_s, "same answers": f"{same}/{len(items)}",
                "same answers, several windows": f"{same_long}/{len(long_contexts)}", "max score diff": worst})
    return row


def find_windows(learn, question, context):
    from blurlite.all import find_hf_transform

    tfm = find_hf_transform(learn.dls)
    return tfm.tokenize([(question, context)])[0]["input_ids"]


def main(argv=None):
    args = parse_args(argv)
    train, valid = frames(args)
    common.quiet_libraries()
    print(json.dumps(common.machine_info()), flush=True)
    print(f"train: {len(train)} questions ({TRAIN.name}), valid: {len(valid)} ({VALID.name}); MiniLM, "
          f"max_length {args.max_length}, stride {args.stride}, bs {args.bs}, lr {args.lr}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads", flush=True)
    ours, learn = blurlite_run(train, valid, args)
    print(json.dumps(ours), flush=True)
    rows = [ours]
    if not args.skip_trainer:
        rows.append(trainer_run(train, learn, args))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| run | training windows | fit s | tokens/s | valid loss | EM | F1 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['windows']} | {r['fit_s']:.0f} | {r['tok_s']:.0f} | {r['valid_loss']:.3f} | "
              f"{100 * r['em']:.1f} | {100 * r['f1']:.1f} |")
    if len(rows) == 2:
        print(f"\nblurlite / Trainer training tokens/s: {rows[0]['tok_s'] / rows[1]['tok_s']:.2f}x")
    inference = inference_run(learn, valid, args)
    print("\n" + json.dumps(inference, indent=1))


if __name__ == "__main__":
    main()
