"""Question generation on real SQuAD questions with an encoder-decoder warm-started from MiniLM: the smallest
budget that shows learning (about 80 seconds on 2 cores: 640 questions, 2 epochs). bench/seq2seq_qg.py compares a
larger budget with the HF Seq2SeqTrainer, and 4.57.6's text2text pipeline with `learn.generate`."""
from pathlib import Path

import pandas as pd
from test_real_minilm import minilm_dir
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.torch_core import set_seed

from blurlite.all import (GenerationMetric, HFSeq2SeqDataLoaders, hf_encoder_decoder, hf_learner, seq2seq_perplexity,
                          squad_to_question_generation_df)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_a_minilm2minilm_learns_to_ask_squad_questions():
    df = pd.concat([squad_to_question_generation_df(DATA / name)
                    for name in ("squad_v1_super_bowl_50.json", "squad_v1_notre_dame.json")], ignore_index=True)
    assert len(df) == 1079 and df.text.str.startswith("answer: ").all()
    is_valid = pd.factorize(df.context)[0] % 5 == 4  # every fifth paragraph
    df = pd.concat([df[~is_valid].head(640).assign(is_valid=False), df[is_valid].head(48).assign(is_valid=True)])
    set_seed(0)
    objects = hf_encoder_decoder(minilm_dir())
    dls = HFSeq2SeqDataLoaders.from_df(df, objects, max_length=48, max_target_length=24, valid_col="is_valid", bs=16)
    learn = hf_learner(dls, metrics=[seq2seq_perplexity, GenerationMetric("rougeL"), GenerationMetric("bleu")])
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()
        learn.fit_one_cycle(2, 1e-3)
        after = learn.validate()
    questions = learn.generate(df.text[df.is_valid].tolist()[:3], max_new_tokens=24, num_beams=1)
    print(f"\nquestion generation, 640 questions, 2 epochs: perplexity {before[1]:.0f} -> {after[1]:.0f}, "
          f"ROUGE-L {before[2]:.3f} -> {after[2]:.3f}, BLEU {before[3]:.2f} -> {after[3]:.2f}; {questions}")
    assert after[1] < before[1] / 50  # the true questions: from the untrained decoder's thousands to under a hundred
    assert after[2] > before[2] + 0.1  # the generated questions share words with the real ones
    assert all(q["generated_text"].strip() for q in questions)
