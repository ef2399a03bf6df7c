"""Long documents on real data: MiniLM on IMDB reviews at max_length 64, windows vs truncation (printed)."""
import time

import pandas as pd
from test_real_minilm import IMDB, minilm_dir

import fastai.text.all  # noqa: F401  (what users import first; patches Learner.no_bar)
from fastai.torch_core import set_seed
from blurlite.all import HFTextDataLoaders, hf_learner


def fit(df, **options):
    set_seed(42)
    dls = HFTextDataLoaders.from_df(df, minilm_dir(), valid_col="is_valid", bs=16, max_length=64, seed=42, **options)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 3e-4)
    return learn


def test_windows_read_whole_imdb_reviews_at_max_length_64():
    full = pd.read_csv(IMDB)
    df = pd.concat([full[~full.is_valid].head(96), full[full.is_valid].head(64)], ignore_index=True)
    start = time.perf_counter()
    windows = fit(df, long_texts="windows", stride=16)
    preds, targets = windows.get_preds()  # one row per validation review, from every window of it
    windows_accuracy = float((preds.argmax(1) == targets).float().mean())
    middle = time.perf_counter()
    truncation = fit(df)
    truncation_accuracy = float(truncation.validate()[1])
    end = time.perf_counter()
    dls = windows.dls
    print(f"\nMiniLM, IMDB sample (96 train / 64 valid reviews, max_length 64, 1 epoch, lr 3e-4): windows accuracy "
          f"{windows_accuracy:.3f} ({dls.train.n} training windows, {middle - start:.0f} s), truncation "
          f"{truncation_accuracy:.3f} (96 training texts, {end - middle:.0f} s)")
    assert len(preds) == len(targets) == 64 and dls.train.n > 3 * 96
    assert windows_accuracy >= 0.6
