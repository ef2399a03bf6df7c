"""Masked LM on real text: all-MiniLM-L6-v2 (its MLM head starts from initialisation) on tinyshakespeare."""
import time
from pathlib import Path

import fastai.text.all  # noqa: F401  (what users import first; patches Learner.no_bar)
from fastai.torch_core import set_seed

from blurlite.all import AutoModelForMaskedLM, HFMLMDataLoaders, get_hf_objects, hf_learner
from test_real_minilm import minilm_dir

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def test_minilm_masked_lm_halves_validation_perplexity_on_tinyshakespeare():
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:6000]
    set_seed(42)
    start = time.perf_counter()
    hf_objects = get_hf_objects(minilm_dir(), model_cls=AutoModelForMaskedLM)
    dls = HFMLMDataLoaders.from_texts(lines, hf_objects, max_length=128, group=True, valid_pct=0.15, seed=42, bs=16)
    n_train, n_valid = len(dls.train_ds), len(dls.valid_ds)
    learn = hf_learner(dls)
    with learn.no_bar():
        before = learn.validate()[1]
        learn.fit_one_cycle(1, 5e-4)
        after = learn.validate()
    elapsed = time.perf_counter() - start
    print(f"\nMiniLM MLM on tinyshakespeare ({n_train} train / {n_valid} valid chunks of 128 tokens, 1 epoch): "
          f"valid perplexity {before:.0f} -> {after[1]:.1f}, masked accuracy {after[2]:.3f}, {elapsed:.0f} s")
    assert 200 <= n_train <= 600
    assert after[1] <= before / 2
