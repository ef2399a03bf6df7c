"""`learn.distrib_ctx()` on CPU: two processes under torchrun (gloo), tiny BERTs, results compared here.

One launch trains a sequence classifier and a token classifier; each rank writes what it saw and computed to a
JSON file, and the tests below read those files.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_bert_config
from transformers import BertForSequenceClassification, BertTokenizer

from blurlite.distributed import needs_cpu_mode

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
TESTS_DIR = Path(__file__).parent
N_RANKS = 2
TASKS = ["sequence", "token"]

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, random, sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])
    import pandas as pd
    import transformers
    from conftest import NEGATIVE, NEUTRAL, POSITIVE, make_reviews
    from fastai.callback.core import Callback
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.distributed import rank0_first
    from fastai.torch_core import set_seed

    from blurlite.all import HFTextDataLoaders, HFTokenClassDataLoaders, hf_learner
    from blurlite.tasks.token_classification import SeqevalMetric

    checkpoint, out, rank = sys.argv[2], Path(sys.argv[3]), int(os.environ["RANK"])
    saves = []  # HF save_pretrained calls made by this rank
    _save = transformers.PreTrainedModel.save_pretrained
    transformers.PreTrainedModel.save_pretrained = lambda self, *a, **k: (saves.append(1), _save(self, *a, **k))[1]


    class RecordItems(Callback):
        "Token ids (padding dropped) of every training item of the first epoch."
        def before_fit(self): self.seen = []
        def before_batch(self):
            if self.training and self.epoch == 0:
                x = self.xb[0]
                self.seen += [ids[m.bool()].tolist() for ids, m in zip(x["input_ids"], x["attention_mask"])]




    def make_sentences(n, seed=0):
        rng, rows = random.Random(seed), []
        for i in range(n):
            pairs = [(w, "B-POS") if w in POSITIVE else (w, "B-NEG") if w in NEGATIVE else (w, "O")
                     for w in (rng.choice(POSITIVE + NEGATIVE + NEUTRAL) for _ in range(rng.randint(2, 12)))]
            rows.append(([w for w, _ in pairs], [t for _, t in pairs], i % 4 == 0))
        return pd.DataFrame(rows, columns=["words", "tags", "is_valid"])


    def checksum(model):
        digest = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            digest.update(name.encode() + t.detach().cpu().numpy().tobytes())
        return digest.hexdigest()


    def run(name, learn):
        record = RecordItems()
        with learn.distrib_ctx():
            learn.fit_one_cycle(2, 1e-3, cbs=record)
            in_ctx = [float(v) for v in learn.recorder.values[-1][1:]]  # valid loss and metrics, last epoch
            # per-token tensors of different lengths on each rank
            inputs, preds, targs = learn.get_preds(with_input=True, reorder=False)
        learn.save_pretrained(out / name)
        single = [float(v) for v in learn.validate()]  # after the ctx: each rank on the whole validation set
        ds = learn.dls.train.dataset
        result = {"checksum": checksum(learn.model), "seen": record.seen, "saves": len(saves),
                  "saved": (out / name / "blurlite.json").exists(),
                  "n_preds": len(preds), "n_inputs": len(inputs["input_ids"]),
                  "pads": sorted({int(v) for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])
                                  for v in ids[m == 0]}),
                  "mask_values": sorted({int(v) for m in inputs["attention_mask"] for v in m}),
                  "metrics": in_ctx, "single": single,
                  "targets": [[int(v) for v in t.flatten() if v != -100] for t in targs],
                  "train_items": [ds[i][0]["input_ids"].tolist() for i in range(len(ds))],
                  "valid_targets": [[int(v) for v in y.flatten() if v != -100] for _, y in learn.dls.valid.dataset]}
        saves.clear()
        (out / f"{name}-{rank}.json").write_text(json.dumps(result))
        return learn


    set_seed(0)
    # before the fixes are installed, as a user script would: accelerate's state is created without CPU mode
    dls = rank0_first(HFTextDataLoaders.from_df, make_reviews(100), checkpoint, valid_col="is_valid", bs=8)
    run("sequence", hf_learner(dls))
    set_seed(0)
    dls = HFTokenClassDataLoaders.from_df(make_sentences(107), checkpoint, valid_col="is_valid", bs=8)
    learn = run("token", hf_learner(dls, metrics=[SeqevalMetric("accuracy"), SeqevalMetric("f1")]))
    (out / "a-file").write_text("")
    try:  # rank 0 cannot write under a file: every rank must raise, none wait forever
        learn.save_pretrained(out / "a-file" / "model")
        error = None
    except Exception as e:
        error = type(e).__name__
    (out / f"failed-save-{rank}.json").write_text(json.dumps(error))
    # shut gloo down on both ranks together: a rank exiting while the other's gloo threads still run aborts
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()
""")


def _checksum(model) -> str:
    "SHA-256 of the model's state dict (the launched script computes the same)."
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode() + t.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "What each rank wrote, by task name then rank, after one two-process torchrun launch."
    tmp = tmp_path_factory.mktemp("distributed")
    checkpoint = tmp / "tiny-bert"
    torch.manual_seed(0)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(checkpoint)
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(checkpoint)
    (tmp / "train.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # the CPU mode must come from blurlite
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={N_RANKS}",
               "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
               str(tmp / "train.py"), str(TESTS_DIR), str(checkpoint), str(tmp)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = {name: [json.loads((tmp / f"{name}-{r}.json").read_text()) for r in range(N_RANKS)]
               for name in ("sequence", "token")}
    return tmp, results



def test_cpu_mode_only_for_several_processes_without_cuda():
    assert needs_cpu_mode({"WORLD_SIZE": "2"}, cuda_available=False)
    assert not needs_cpu_mode({"WORLD_SIZE": "2"}, cuda_available=True)
    assert not needs_cpu_mode({"WORLD_SIZE": "1"}, cuda_available=False)
    assert not needs_cpu_mode({}, cuda_available=False)


@pytest.mark.parametrize("task", TASKS)
def test_ranks_end_with_identical_parameters(runs, task):
    _, results = runs
    assert len({r["checksum"] for r in results[task]}) == 1


@pytest.mark.parametrize("task", TASKS)
def test_each_rank_trains_on_a_disjoint_half(runs, task):
    _, results = runs
    seen = [Counter(map(tuple, r["seen"])) for r in results[task]]
    everything = Counter(map(tuple, results[task][0]["train_items"]))
    assert sum(seen[0].values()) == sum(seen[1].values()) == sum(everything.values()) // N_RANKS
    assert seen[0] + seen[1] == everything


def test_token_predictions_are_gathered_from_all_ranks(runs):
    "Padded to the same length across ranks before the gather: one prediction per validation item."
    _, results = runs
    for result in results["token"]:
        assert result["n_preds"] == result["n_inputs"] == len(result["valid_targets"])
        # inputs padded across ranks as the loader pads them
        assert result["pads"] == [VOCAB.index("[PAD]")] and result["mask_values"] == [0, 1]
        assert Counter(map(tuple, result["targets"])) == Counter(map(tuple, result["valid_targets"]))


def test_seqeval_metrics_are_exact_on_every_rank(runs):
    "SeqevalMetric gathers every rank's sentences: token accuracy and entity F1 equal the one-process values."
    _, results = runs
    for result in results["token"]:
        assert result["metrics"][1:3] == pytest.approx(result["single"][1:3], abs=1e-9)


def test_sequence_metrics_are_exact_when_valid_set_divides_evenly(runs):
    "AvgMetric (accuracy) and the loss average over the padded set: exact here as 20 % 2 == 0."
    _, results = runs
    for result in results["sequence"]:
        assert result["metrics"] == pytest.approx(result["single"], rel=1e-5)


def test_failed_save_raises_on_every_rank(runs):
    tmp, _ = runs
    errors = [json.loads((tmp / f"failed-save-{r}.json").read_text()) for r in range(N_RANKS)]
    assert errors[0] in ("FileExistsError", "NotADirectoryError") and errors[1] == "RuntimeError"


@pytest.mark.parametrize("task", TASKS)
def test_save_pretrained_writes_from_rank_zero_and_loads(runs, task):
    from blurlite.all import load_pretrained_learner

    tmp, results = runs
    assert [r["saves"] for r in results[task]] == [1, 0]
    assert all(r["saved"] for r in results[task])  # rank 1 returned after rank 0 had finished
    assert _checksum(load_pretrained_learner(tmp / task).model) == results[task][0]["checksum"]
