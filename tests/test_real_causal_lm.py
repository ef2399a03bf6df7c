"""A small GPT-2 trained from scratch on real text (tinyshakespeare), with a tokenizer trained on it: the smallest
budget that shows learning (about 20 seconds on 2 cores: 2,400 speeches, 3 epochs). bench/clm_shakespeare.py compares it with the Trainer."""
from pathlib import Path

import pandas as pd
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.torch_core import set_seed
from transformers import AutoModelForCausalLM, GPT2Config

from blurlite.all import HFCausalLMDataLoaders, get_hf_objects, hf_learner, read_texts, train_bpe_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def test_a_gpt2_learns_shakespeare_from_scratch(tmp_path):
    texts, split = read_texts(SHAKESPEARE)
    assert split == "paragraphs" and len(texts) > 7000  # the speeches
    texts = texts[:2400]
    df = pd.DataFrame({"text": texts, "is_valid": [i >= 2160 for i in range(len(texts))]})  # the last 10%
    train_bpe_tokenizer(df.text[~df.is_valid], vocab_size=1024).save_pretrained(tmp_path / "tok")
    set_seed(0)
    objects = get_hf_objects(tmp_path / "tok", model_cls=AutoModelForCausalLM, pretrained=False,
                             config=GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=64, vocab_size=1024))
    dls = HFCausalLMDataLoaders.from_df(df, objects, block_size=64, valid_col="is_valid", bs=16)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()[1]
        learn.fit_one_cycle(3, 1e-2)
        _, after, accuracy = learn.validate()
    set_seed(0)
    samples = learn.generate(["ROMEO:\n", "First Citizen:\n"], max_new_tokens=30, do_sample=True, temperature=0.8)
    print(f"\ntinyshakespeare, {len(dls.train_ds)} blocks of 64 tokens, 3 epochs: validation perplexity "
          f"{before:.0f} -> {after:.0f}, next-token accuracy {accuracy:.3f}; samples: {samples}")
    assert before > 800 and after < before / 5 and accuracy > 0.08  # uniform over 1024 tokens: ~1024, 0.001
    assert all(s[0]["generated_text"] != p for s, p in zip(samples, ["ROMEO:\n", "First Citizen:\n"]))
