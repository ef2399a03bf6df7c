"""Question answering on real SQuAD questions: MiniLM trained on one article's questions, validated on another's."""
import time
from pathlib import Path

from test_real_minilm import minilm_dir

import fastai.text.all  # noqa: F401  (what users import first; patches Learner.no_bar)
import pandas as pd
from fastai.torch_core import set_seed
from blurlite.all import HFQADataLoaders, hf_learner, squad_to_df

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_minilm_learns_to_answer_super_bowl_questions_from_notre_dame_ones():
    train = squad_to_df(DATA / "squad_v1_notre_dame.json")
    valid = squad_to_df(DATA / "squad_v1_super_bowl_50.json")
    assert (len(train), len(valid)) == (269, 810)
    df = pd.concat([train.assign(is_valid=False), valid.head(80).assign(is_valid=True)], ignore_index=True)
    set_seed(42)
    start = time.perf_counter()
    dls = HFQADataLoaders.from_df(df, minilm_dir(), valid_col="is_valid", bs=16, max_length=128, stride=32)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()
        learn.fit_one_cycle(2, 3e-4)
        loss, em, f1 = learn.validate()
    print(f"\nMiniLM, SQuAD v1.1 (269 Notre Dame questions -> 80 Super Bowl 50 questions, {dls.train.n} training "
          f"windows of at most 128 tokens, 2 epochs, lr 3e-4): EM {em:.3f}, F1 {f1:.3f} (untrained: EM "
          f"{before[1]:.3f}, F1 {before[2]:.3f}), valid loss {loss:.3f}, {time.perf_counter() - start:.0f} s")
    assert loss < before[0] and f1 > max(2 * before[2], before[2] + 0.08) and em > before[1]
