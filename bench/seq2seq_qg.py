"""Sequence to sequence on real data, question generation from SQuAD: blurlite vs the HF Seq2SeqTrainer at the same
budget, `learn.generate` vs transformers 4.57.6's `pipeline("text2text-generation")` (parity) and vs plain
`model.generate` (speed), side by side in one run (issue 25).

Inputs "answer: <answer> context: <the sentence holding it>", targets the question
(`squad_to_question_generation_df`) of both SQuAD files (Super_Bowl_50 and University_of_Notre_Dame, 1,079
questions), split by paragraph: every fifth paragraph's questions (190) validate. The model: an encoder-decoder warm-started from MiniLM
(all-MiniLM-L6-v2 as encoder and as decoder, new cross-attention: `hf_encoder_decoder`), the same initial weights in
both runs (cross-attention drawn once, then copied):
  a) blurlite: `HFSeq2SeqDataLoaders.from_df` + `hf_learner` + `fit_one_cycle` (HFAdamW, one-cycle schedule);
  b) the HF Seq2SeqTrainer on the same token ids, `DataCollatorForSeq2Seq` (the model's shift), AdamW with a
     cosine schedule and 25% warm-up (the benches' Trainer settings), the same epochs, batch size and peak lr;
both scored by the same code: greedy generation of every validation question, ROUGE (rouge-score) and BLEU
(sacrebleu) (`learn.validate()`; the Trainer's model is put in a blurlite learner for it).
c) Parity: the trained artifact generates the validation questions with `learn.generate` and with transformers
   4.57.6's pipeline (installed with `pip install --target` into `--tf4`, run in a subprocess), greedy and 4-beam
   (32 new tokens), and with no settings at all on the first 24 texts (the pipeline's defaults: 256 tokens, 4 beams).
d) Speed: `learn.generate` (batched, longest first) vs plain `model.generate` on the same inputs in batches of the
   same size, in the data's order, greedy and 4-beam.

Run: python bench/seq2seq_qg.py [--epochs 3] [--quick]   (CPU: about 15 minutes in full; --quick: 3 minutes)
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

import torch  # noqa: E402

DATA = common.ROOT.parent / "shared" / "data"
FILES = [DATA / "squad_v1_super_bowl_50.json", DATA / "squad_v1_notre_dame.json"]

PIPELINE_SCRIPT = """
import json, sys, time
import transformers
from transformers import pipeline
path, texts_file, out_file = sys.argv[1:4]
texts = json.load(open(texts_file))
pipe = pipeline("text2text-generation", model=path, device="cpu")
out = {"version": transformers.__version__}
for name, settings in (("greedy", dict(num_beams=1, max_new_tokens=32)), ("beam", dict(num_beams=4, max_new_tokens=32)),
                       ("defaults", {})):
    start = time.perf_counter()
    out[name] = [pipe(t, **settings)[0]["generated_text"] for t in (texts[:24] if name == "defaults" else texts)]
    out[name + " s"] = time.perf_counter() - start
json.dump(out, open(out_file, "w"))
"""


def parse_args(argv=None):
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.set_defaults(max_length=64, lr=6e-4, bs=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-target-length", type=int, default=32)
    parser.add_argument("--tf4", type=Path, default=Path(tempfile.gettempdir()) / "transformers-4.57.6",
                        help="where transformers 4.57.6 is (or gets) installed with pip install --target")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_valid, args.epochs = 160, 48, 1
    else:
        args.n_train, args.n_valid = 10_000, 10_000
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def frames(args):
    import pandas as pd

    from blurlite.all import squad_to_question_generation_df

    df = pd.concat([squad_to_question_generation_df(f) for f in FILES], ignore_index=True)
    is_valid = pd.factorize(df.context)[0] % 5 == 4  # every fifth paragraph
    return df[~is_valid].head(args.n_train), df[is_valid].head(args.n_valid)


def initial_objects(args):
    "MiniLM as encoder and decoder, its cross-attention drawn under the seed; the weights, to start both runs from."
    from fastai.torch_core import set_seed

    from blurlite.all import hf_encoder_decoder

    set_seed(args.seed)
    objects = hf_encoder_decoder(common.minilm_dir())
    return objects, {k: v.clone() for k, v in objects.hf_model.state_dict().items()}


def blurlite_run(train, valid, args) -> tuple[dict, object, dict]:
    "Fine-tune with blurlite; the figures, the learner and the initial weights."
    import pandas as pd
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401
    from fastai.torch_core import set_seed

    import train_speed
    from blurlite.all import HFSeq2SeqDataLoaders, hf_learner

    objects, init = initial_objects(args)
    df = pd.concat([train.assign(is_valid=False), valid.assign(is_valid=True)], ignore_index=True)
    dls = HFSeq2SeqDataLoaders.from_df(df, objects, valid_col="is_valid", bs=args.bs, max_length=args.max_length,
                                       max_target_length=args.max_target_length)
    set_seed(args.seed)
    learn = hf_learner(dls)
    meter = train_speed.TrainMeter()
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.fit_one_cycle(args.epochs, args.lr, cbs=[meter])
        fit_s = time.perf_counter() - start
        scores = dict(zip(["valid_loss"] + [m.name for m in learn.metrics], learn.validate()))
    return dict(run="blurlite", fit_s=fit_s, train_s=meter.seconds, tok_s=sum(meter.lengths) / meter.seconds,
                **scores), learn, init


def trainer_run(learn, init, args) -> dict:
    "The HF Seq2SeqTrainer on the same token ids from the same weights; scored by `learn.validate()` with its weights."
    from fastai.torch_core import set_seed
    from transformers import (DataCollatorForSeq2Seq, EncoderDecoderModel, PrinterCallback, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments)

    import train_speed
    from blurlite.all import find_hf_transform, hf_learner

    ds, tokenizer = learn.dls.train_ds, find_hf_transform(learn.dls).hf_tokenizer
    items = [{"input_ids": ds[i][0]["input_ids"].tolist(), "attention_mask": ds[i][0]["attention_mask"].tolist(),
              "labels": ds[i][1].tolist()} for i in range(len(ds))]
    model = EncoderDecoderModel(config=learn.model.hf_model.config)
    model.load_state_dict(init)
    model.generation_config = learn.model.hf_model.generation_config
    set_seed(args.seed)
    epoch, EpochTimer = train_speed.trainer_epoch_timer()
    with tempfile.TemporaryDirectory() as out:
        base = train_speed._training_arguments(args, out, "random", False, num_train_epochs=args.epochs)
        targs = Seq2SeqTrainingArguments(**{k: v for k, v in base.to_dict().items()
                                            if k in Seq2SeqTrainingArguments.__dataclass_fields__ and
                                            not k.startswith("_") and k not in ("push_to_hub_token",)})
        trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=items,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), callbacks=[EpochTimer()])
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        fit_s = time.perf_counter() - start
    scorer = hf_learner(learn.dls, model)
    with scorer.no_bar(), scorer.no_logging():
        scores = dict(zip(["valid_loss"] + [m.name for m in scorer.metrics], scorer.validate()))
    tokens = sum(sum(it["attention_mask"]) for it in items) * args.epochs
    return dict(run="HF Seq2SeqTrainer", fit_s=fit_s, train_s=epoch["seconds"], tok_s=tokens / epoch["seconds"],
                **scores)



def plain_generate_s(learn, texts: list[str], bs: int, **settings) -> float:
    "Seconds of plain `model.generate` over `texts` in batches of `bs`, in the given order (the tokenizer pads)."
    from blurlite.all import find_hf_transform

    tok, model = find_hf_transform(learn.dls).hf_tokenizer, learn.model.hf_model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), bs):
            enc = tok(texts[i:i + bs], padding=True, return_tensors="pt", return_token_type_ids=False)
            ids = model.generate(**enc, **settings)
            tok.batch_decode(ids, skip_special_tokens=True)
    return time.perf_counter() - start


def generation_run(learn, valid, args) -> dict:
    "Parity with 4.57.6's pipeline on the artifact, and speed against plain `model.generate`."
    texts = valid.text.tolist()
    row = {"texts": len(texts)}
    ours = {}
    for name, settings in (("greedy", dict(num_beams=1, max_new_tokens=32)),
                           ("beam", dict(num_beams=4, max_new_tokens=32))):
        start = time.perf_counter()
        ours[name] = [g["generated_text"] for g in learn.generate(texts, bs=args.bs, **settings)]
        row[f"blurlite {name} s"] = time.perf_counter() - start
        row[f"plain generate {name} s"] = plain_generate_s(learn, texts, args.bs, **settings)
        row[f"{name} speed-up vs plain generate"] = row[f"plain generate {name} s"] / row[f"blurlite {name} s"]
    ours["defaults"] = [g["generated_text"] for g in learn.generate(texts[:24], bs=args.bs)]
    row["examples"] = [{"text": t, "target": q, "greedy": g} for t, q, g in
                       zip(texts[:5], valid.target[:5], ours["greedy"][:5])]
    if args.skip_pipeline:
        return row
    common.ensure_tf4(args.tf4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        learn.save_pretrained(tmp / "artifact")
        (tmp / "texts.json").write_text(json.dumps(texts))
        env = {**os.environ, "PYTHONPATH": str(args.tf4), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(tmp / "artifact"), str(tmp / "texts.json"),
                        str(tmp / "out.json")], env=env, check=True)
        theirs = json.loads((tmp / "out.json").read_text())
    row["pipeline"] = f"transformers {theirs['version']}, one text at a time"
    for name in ("greedy", "beam", "defaults"):
        row[f"same {name} texts"] = f"{sum(a == b for a, b in zip(ours[name], theirs[name]))}/{len(theirs[name])}"
        row[f"pipeline {name} s"] = theirs[name + " s"]
    return row


def main(argv=None):
    args = parse_args(argv)
    train, valid = frames(args)
    common.quiet_libraries()
    print(json.dumps(common.machine_info()), flush=True)
    print(f"train: {len(train)} questions, valid: {len(valid)} (other paragraphs); MiniLM2MiniLM, "
          f"max_length {args.max_length}, max_target_length {args.max_target_length}, bs {args.bs}, lr {args.lr}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads", flush=True)
    ours, learn, init = blurlite_run(train, valid, args)
    print(json.dumps(ours), flush=True)
    rows = [ours]
    if not args.skip_trainer:
        rows.append(trainer_run(learn, init, args))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| run | fit s | training tokens/s | valid loss | perplexity | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['fit_s']:.0f} | {r['tok_s']:.0f} | {r['valid_loss']:.3f} | {r['perplexity']:.1f} | "
              f"{r['rouge1']:.3f} | {r['rouge2']:.3f} | {r['rougeL']:.3f} | {r['bleu']:.2f} |")
    if len(rows) == 2:
        print(f"\nblurlite / Seq2SeqTrainer training tokens/s: {rows[0]['tok_s'] / rows[1]['tok_s']:.2f}x")
    print("\n" + json.dumps(generation_run(learn, valid, args), indent=1))


if __name__ == "__main__":
    main()
