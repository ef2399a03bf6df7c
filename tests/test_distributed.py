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
from transformers import BertForMaskedLM, BertForSequenceClassification, BertTokenizer

from blurlite.distributed import needs_cpu_mode

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
TESTS_DIR = Path(__file__).parent
N_RANKS = 2
TASKS = ["sequence", "token", "mlm"]

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, random, sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])
    import pandas as pd
    import torch
    import transformers
    from conftest import NEGATIVE, NEUTRAL, POSITIVE, changed_attributes, fastai_class_attributes, make_reviews
    from fastai.callback.core import Callback
    from fastai.callback.progress import CSVLogger
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.distributed import rank0_first
    from fastai.torch_core import set_seed

    from blurlite.all import HFMLMDataLoaders, HFTextDataLoaders, HFTokenClassDataLoaders, hf_learner
    from blurlite.tasks.token_classification import SeqevalMetric

    checkpoint, mlm_checkpoint, out = sys.argv[2], sys.argv[3], Path(sys.argv[4])
    rank = int(os.environ["RANK"])
    saves = []  # HF save_pretrained calls made by this rank
    _save = transformers.PreTrainedModel.save_pretrained
    transformers.PreTrainedModel.save_pretrained = lambda self, *a, **k: (saves.append(1), _save(self, *a, **k))[1]


    class RecordItems(Callback):
        "Token ids (padding dropped) of every training item of the first epoch, batch by batch."
        def before_fit(self): self.seen = []
        def before_batch(self):
            if self.training and self.epoch == 0:
                x = self.xb[0]
                self.seen.append([ids[m.bool()].tolist() for ids, m in zip(x["input_ids"], x["attention_mask"])])


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


    def rows(x):
        "Rows of a get_preds result (a tensor or fastai's L of ragged rows), rounded, as lists."
        if isinstance(x, dict):
            return {k: rows(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)) and not hasattr(x, "map"):
            return [rows(v) for v in x]
        return [torch.round(torch.as_tensor(r).float(), decimals=4).tolist() for r in x]


    def run(name, learn):
        record = RecordItems()
        learn.path = out / f"{name}-rank{rank}"
        learn.path.mkdir()
        with learn.distrib_ctx():
            learn.fit_one_cycle(2, 1e-3, cbs=[record, CSVLogger()])
            in_fit = [float(v) for v in learn.recorder.values[-1][1:]]  # valid loss and metrics, last epoch
            in_ctx = [float(v) for v in learn.validate()]
            preds_ctx = rows(learn.get_preds()[0])  # reordered to the dataset's order
            inputs, preds, targs = learn.get_preds(with_input=True, reorder=False)
            learn.export(out / f"{name}.pkl")  # inside the context
            try:
                learn.export(out / "no-such-dir" / "x.pkl")
                export_error = None
            except Exception as e:
                export_error = type(e).__name__
            try:
                learn.lr_find()
                lr_find_error = None
            except RuntimeError as e:
                lr_find_error = str(e)
        learn.save_pretrained(out / name)
        single = [float(v) for v in learn.validate()]  # after the context: each rank on the whole validation set
        ds = learn.dls.train.dataset
        result = {"checksum": checksum(learn.model), "seen": record.seen, "saves": len(saves),
                  "saved": (out / name / "blurlite.json").exists(), "exported": (out / f"{name}.pkl").exists(),
                  "export_error": export_error, "lr_find_error": lr_find_error,
                  "n_preds": len(preds), "n_inputs": len(inputs["input_ids"]),
                  "in_fit": in_fit, "in_ctx": in_ctx, "single": single,
                  "preds_ctx": preds_ctx, "preds_single": rows(learn.get_preds()[0]),
                  "preds_noreorder_ctx": rows(preds), "inputs_noreorder_ctx": rows(inputs["input_ids"]),
                  "train_items": [ds[i][0]["input_ids"].tolist() for i in range(len(ds))],
                  "history": sorted(p.name for p in learn.path.iterdir())}
        inputs1, preds1, _ = learn.get_preds(with_input=True, reorder=False)
        result.update(preds_noreorder_single=rows(preds1), inputs_noreorder_single=rows(inputs1["input_ids"]))
        saves.clear()
        (out / f"{name}-{rank}.json").write_text(json.dumps(result))
        return learn


    fastai_before = fastai_class_attributes()
    set_seed(0)
    # before any blurlite learner exists, as a user script would: accelerate's state is created without CPU mode
    dls = rank0_first(HFTextDataLoaders.from_df, make_reviews(105), checkpoint, valid_col="is_valid", bs=8)
    run("sequence", hf_learner(dls))  # 21 validation items: not a multiple of 2
    set_seed(0)
    dls = HFTokenClassDataLoaders.from_df(make_sentences(107), checkpoint, valid_col="is_valid", bs=8)
    learn = run("token", hf_learner(dls, metrics=[SeqevalMetric("accuracy"), SeqevalMetric("f1")]))
    set_seed(0)
    dls = HFMLMDataLoaders.from_df(make_reviews(105), mlm_checkpoint, valid_col="is_valid", bs=8)
    run("mlm", hf_learner(dls))
    (out / "a-file").write_text("")
    try:  # rank 0 cannot write under a file: every rank must raise, none wait forever
        learn.save_pretrained(out / "a-file" / "model")
        error = None
    except Exception as e:
        error = type(e).__name__
    (out / f"failed-save-{rank}.json").write_text(json.dumps(error))
    (out / f"fastai-changed-{rank}.json").write_text(json.dumps(changed_attributes(fastai_before,
                                                                                 fastai_class_attributes())))
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


def _flat(x) -> list:
    "Nested lists of numbers, flattened (rows differ in length: equal flat lists and row counts are equal rows)."
    return [v for item in x for v in _flat(item)] if isinstance(x, list) else [x]


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
    mlm_checkpoint = tmp / "tiny-bert-mlm"
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(mlm_checkpoint)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(mlm_checkpoint)
    (tmp / "train.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # the CPU mode must come from blurlite
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={N_RANKS}",
               "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
               str(tmp / "train.py"), str(TESTS_DIR), str(checkpoint), str(mlm_checkpoint), str(tmp)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = {name: [json.loads((tmp / f"{name}-{r}.json").read_text()) for r in range(N_RANKS)]
               for name in TASKS}
    return tmp, results



def test_fastai_classes_are_unchanged_by_distributed_blurlite_learners(runs):
    "Three blurlite learners created, trained and exported under distrib_ctx on 2 ranks: no fastai class changed."
    tmp, _ = runs
    for rank in range(N_RANKS):
        assert json.loads((tmp / f"fastai-changed-{rank}.json").read_text()) == []


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
def test_each_rank_trains_on_a_disjoint_half_in_whole_batches(runs, task):
    "Each training item at most once per epoch over both ranks, as many steps on each, as many items as one process."
    _, results = runs
    seen = [Counter(tuple(item) for batch in r["seen"] for item in batch) for r in results[task]]
    everything = Counter(map(tuple, results[task][0]["train_items"]))
    assert len(results[task][0]["seen"]) == len(results[task][1]["seen"])  # as many steps: DDP syncs each
    n_batches = sum(everything.values()) // 8  # bs 8; the last, partial batch is dropped, as in one process
    assert sum(seen[0].values()) == sum(seen[1].values()) == n_batches * 8 // N_RANKS
    if task != "mlm":  # masked-LM inputs are masked: not the items' ids
        assert not seen[0] & seen[1] and (seen[0] + seen[1]) - everything == Counter()


def test_batches_stay_length_bucketed_on_every_rank(runs):
    "fastai slices one index list, which mixes buckets on rank 1; whole batches keep padding low on both ranks."
    _, results = runs
    for r in results["sequence"]:
        lengths = [[len(item) for item in batch] for batch in r["seen"]]
        padding = sum(max(b) * len(b) - sum(b) for b in lengths) / sum(max(b) * len(b) for b in lengths)
        assert padding < 0.1


@pytest.mark.parametrize("task", TASKS)
def test_validation_in_the_context_is_exact(runs, task):
    "Loss and metrics (accuracy, entity F1, perplexity) equal one process validating the whole set: 21 or 27 items."
    _, results = runs
    for r in results[task]:
        assert len(r["single"]) == 3  # the loss and two metrics
        assert r["in_fit"] == pytest.approx(r["single"], rel=1e-5, abs=1e-7)
        assert r["in_ctx"] == pytest.approx(r["single"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("task", TASKS)
def test_get_preds_in_the_context_are_every_item_in_one_process_order(runs, task):
    _, results = runs
    for r in results[task]:
        assert len(r["preds_ctx"]) == len(r["preds_single"])
        assert _flat(r["preds_ctx"]) == pytest.approx(_flat(r["preds_single"]), abs=2e-4)
        assert r["inputs_noreorder_ctx"] == r["inputs_noreorder_single"]
        assert _flat(r["preds_noreorder_ctx"]) == pytest.approx(_flat(r["preds_noreorder_single"]), abs=2e-4)
        assert r["n_preds"] == r["n_inputs"]


@pytest.mark.parametrize("task", TASKS)
def test_export_inside_the_context_writes_once_and_loads(runs, task):
    from fastai.learner import load_learner

    tmp, results = runs
    assert all(r["exported"] for r in results[task])
    learn = load_learner(tmp / f"{task}.pkl")  # written by this test's own launch
    assert _checksum(learn.model) == results[task][0]["checksum"]
    # a failed export raises on every rank and leaves nothing behind
    assert [r["export_error"] for r in results[task]] == ["FileNotFoundError", "RuntimeError"]
    assert not (tmp / "no-such-dir").exists()
    assert not [p for p in tmp.iterdir() if p.name.endswith(".tmp")]


def test_lr_find_in_the_context_says_to_run_it_in_one_process(runs):
    _, results = runs
    for r in results["sequence"]:
        assert "run it in one process" in r["lr_find_error"]


def test_csv_logger_writes_from_rank_zero_only(runs):
    _, results = runs
    assert [r["history"] for r in results["sequence"]] == [["history.csv"], []]


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


def _dealt(dl, world_size: int, validating: bool) -> list[list[list[int]]]:
    "Each rank's batches (item indices) from `HFDistributedDL`, without a process group (rank 0's order shared)."
    from blurlite.distributed import HFDistributedDL

    out = []
    for rank in range(world_size):
        torch.manual_seed(0)
        import random as _random

        _random.seed(0)
        import numpy as _np

        _np.random.seed(0)
        d = HFDistributedDL(dl, rank=rank, world_size=world_size)
        d._broadcast = lambda t, r: t
        d.validating = validating
        d.get_idxs()
        assert len(d) == len(d._batches)
        out.append([list(map(int, b)) for b in d._batches])
    return out


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_batches_are_dealt_whole_with_as_many_steps_per_rank(tiny_bert_dir, world_size):
    from conftest import make_reviews

    from blurlite.all import HFTextDataLoaders

    dls = HFTextDataLoaders.from_df(make_reviews(105), tiny_bert_dir, valid_col="is_valid", bs=8)
    dealt = _dealt(dls.train, world_size, validating=False)
    n_batches = len(dls.train)  # one process: 84 items, bs 8, the partial batch dropped
    assert {len(b) for b in dealt} == {-(-n_batches // world_size)}
    lengths = dls.train.res
    for batches in dealt:
        for b in batches:  # each a bucket: lengths within one sorted chunk of the one-process order
            assert len(b) == 8 and max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 2
    items = [i for batches in dealt for b in batches for i in b]
    assert len(set(items)) == n_batches * 8  # all distinct except the repeated batches that even the ranks


@pytest.mark.parametrize("n_valid,bs,world_size", [(21, 8, 2), (21, 8, 3), (5, 8, 2), (3, 8, 3)])
def test_validation_batches_are_the_one_process_batches_none_twice(tiny_bert_dir, n_valid, bs, world_size):
    from conftest import make_reviews

    from blurlite.all import HFTextDataLoaders

    df = make_reviews(n_valid * 5)
    dls = HFTextDataLoaders.from_df(df, tiny_bert_dir, valid_col="is_valid", bs=bs)
    dealt = _dealt(dls.valid, world_size, validating=True)
    one_process = [list(map(int, b)) for b in dls.valid.chunkify(dls.valid.get_idxs())]
    items = sorted(i for batches in dealt for b in batches for i in b)
    assert items == list(range(n_valid))  # every item once
    assert all(batches for batches in dealt)  # every rank validates something
    if len(one_process) >= world_size:
        assert [b for k in range(len(one_process)) for b in dealt[k % world_size][k // world_size:][:1]] == one_process


def test_validating_fewer_items_than_processes_is_refused(tiny_bert_dir):
    from conftest import make_reviews

    from blurlite.all import HFTextDataLoaders

    dls = HFTextDataLoaders.from_df(make_reviews(10), tiny_bert_dir, valid_col="is_valid", bs=8)  # 2 valid
    with pytest.raises(ValueError, match="cannot validate 2 items on 3 processes"):
        _dealt(dls.valid, 3, validating=True)


def test_the_same_script_runs_in_one_process(tiny_bert_dir, monkeypatch):
    "Under plain `python` (no WORLD_SIZE) `distrib_ctx` changes nothing: no wrapper, no patched loader, fastai's own."
    from conftest import make_reviews
    from fastai.distributed import DistributedTrainer

    from blurlite.all import HFSortedDL, HFTextDataLoaders, hf_learner

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dls = HFTextDataLoaders.from_df(make_reviews(40), tiny_bert_dir, valid_col="is_valid", bs=8)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging(), learn.distrib_ctx():
        assert not any(isinstance(cb, DistributedTrainer) for cb in learn.cbs)
        learn.fit(1, 1e-3)
        assert type(learn.dls.train) is HFSortedDL
        valid = learn.validate()
    assert len(valid) == 3 and all(v is not None for v in valid)


def test_only_blurlite_learners_get_blurlite_loaders(tiny_bert_dir, monkeypatch):
    "Under distrib_ctx a blurlite learner gets HFDistributedTrainer (HFDistributedDL loaders); a plain learner fastai's."
    from types import SimpleNamespace

    from conftest import make_reviews
    from fastai.distributed import DistributedDL, DistributedTrainer
    from fastai.learner import Learner

    from blurlite.all import HFTextDataLoaders, hf_learner
    from blurlite.distributed import HFDistributedDL, HFDistributedTrainer

    import fastai.distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "0")  # restored afterwards: CPU mode sets it
    monkeypatch.setattr(fastai.distributed, "Accelerator", lambda **kwargs: None)  # no process group here
    dls = HFTextDataLoaders.from_df(make_reviews(40), tiny_bert_dir, valid_col="is_valid", bs=8)
    blurlite_learn = hf_learner(dls)
    plain_learn = Learner(dls, blurlite_learn.model, loss_func=blurlite_learn.loss_func)
    added = []
    for learn in (blurlite_learn, plain_learn):  # what distrib_ctx adds, without starting a process group
        monkeypatch.setattr(learn, "add_cb", added.append, raising=False)
        learn.to_distributed()
    assert type(added[0]) is HFDistributedTrainer and type(added[1]) is DistributedTrainer
    for trainer, expected in ((HFDistributedTrainer, HFDistributedDL), (DistributedTrainer, DistributedDL)):
        blurlite_learn.model.device = torch.device("cpu")  # fastai's wrap reads it (a DDP model has it)
        wrapped = trainer._wrap_dl(SimpleNamespace(learn=blurlite_learn), dls.train)
        assert type(wrapped) is expected
