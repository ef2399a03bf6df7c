"""LoRA on the real all-MiniLM-L6-v2 checkpoint vs full fine-tuning, same data and budget, on IMDB_SAMPLE."""
import time

import pandas as pd
import peft  # a dev requirement (blurlite's `peft` extra)

import fastai.text.all  # noqa: F401  (what users import first; patches Learner.no_bar)
from fastai.torch_core import set_seed
from test_real_minilm import IMDB, minilm_dir

from blurlite.all import HFTextDataLoaders, get_hf_objects, hf_learner

N_TRAIN, MAX_LENGTH, BS = 400, 96, 8  # one epoch: 50 steps per mode, about a minute for both on 2 idle cores
LR = {"full": 2e-4, "lora": 3e-3}  # LoRA trains few parameters from zero (its B) and takes a larger rate


def test_lora_reaches_full_fine_tuning_accuracy_with_a_fraction_of_the_parameters(tmp_path):
    df = pd.read_csv(IMDB)
    df = pd.concat([df[~df.is_valid].head(N_TRAIN), df[df.is_valid]], ignore_index=True)
    set_seed(42)
    dls = HFTextDataLoaders.from_df(df, minilm_dir(), text_col="text", label_col="label", valid_col="is_valid",
                                    bs=BS, max_length=MAX_LENGTH, seed=42)
    results = {}
    for mode in ("full", "lora"):
        set_seed(42)  # the same new head and the same batches in both runs
        # attention dropout 0: torch's fused CPU attention (2x faster), the same for both modes
        hf_model = get_hf_objects(minilm_dir(), config_kwargs={"num_labels": 2,
                                                               "attention_probs_dropout_prob": 0.0}).hf_model
        peft_config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1) if mode == "lora" else None
        learn = hf_learner(dls, hf_model, peft_config=peft_config)
        start = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, LR[mode])
        _, accuracy, _ = learn.validate()
        results[mode] = {"accuracy": float(accuracy), "seconds": time.perf_counter() - start,
                         **learn.hf_parameter_counts()}
    size = sum(f.stat().st_size for f in learn.save_pretrained(tmp_path / "lora").iterdir())
    full, lora = results["full"], results["lora"]
    print(f"\nMiniLM on IMDB_SAMPLE ({N_TRAIN} train / 200 valid, max_length {MAX_LENGTH}, bs {BS}, 1 epoch): "
          f"full fine-tuning (lr {LR['full']}) accuracy {full['accuracy']:.3f} in {full['seconds']:.0f} s; "
          f"LoRA r=8 (lr {LR['lora']}) accuracy {lora['accuracy']:.3f} in {lora['seconds']:.0f} s, training "
          f"{lora['trainable']:,} of {lora['total']:,} parameters ({100 * lora['trainable_fraction']:.2f}%); "
          f"adapter artifact {size / 2**20:.2f} MB")
    assert full["accuracy"] >= 0.65  # the comparison means something: full fine-tuning learned
    assert lora["accuracy"] >= full["accuracy"] - 0.03
    assert lora["trainable_fraction"] < 0.02 and size < 3 * 2**20
