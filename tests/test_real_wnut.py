"""Fine-tune the real all-MiniLM-L6-v2 checkpoint for NER on WNUT-17."""
import time
from pathlib import Path

import fastai.text.all  # noqa: F401  (what users import first; patches Learner.no_bar)
from fastai.data.block import DataBlock
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.torch_core import set_seed
from test_real_minilm import minilm_dir
from transformers import AutoModelForTokenClassification

from blurlite.all import HFTokenClassBlock, TokenCategoryBlock, get_hf_objects, hf_learner, read_conll

WNUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wnut17_train.conll"


def test_minilm_ner_on_wnut17():
    df = read_conll(WNUT)
    labels = sorted({tag for tags in df.tags for tag in tags})
    set_seed(42)
    start = time.perf_counter()
    hf_objects = get_hf_objects(minilm_dir(), model_cls=AutoModelForTokenClassification,
                                config_kwargs={"num_labels": len(labels)})
    dblock = DataBlock(blocks=(HFTokenClassBlock(*hf_objects, max_length=64), TokenCategoryBlock(vocab=labels)),
                       get_x=ColReader("words"), get_y=ColReader("tags"),
                       splitter=IndexSplitter(range(2500, len(df))))
    dls = dblock.dataloaders(df, bs=16)
    learn = hf_learner(dls, hf_objects.hf_model)
    with learn.no_bar():
        learn.fit_one_cycle(2, 3e-4)
    names = [m.name for m in learn.metrics]
    values = dict(zip(names, learn.validate()[1:]))
    elapsed = time.perf_counter() - start
    print(f"\nMiniLM on WNUT-17 (2,500 train / {len(df) - 2500} valid sentences, max_length 64, 2 epochs): "
          f"entity F1 {values['entity_f1']:.3f}, precision {values['entity_precision']:.3f}, "
          f"recall {values['entity_recall']:.3f}, token accuracy {values['token_accuracy']:.3f}, {elapsed:.0f} s")
    assert values["entity_f1"] >= 0.30
