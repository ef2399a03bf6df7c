"""bf16 mixed precision on CPU (`CPUMixedPrecision`, `hf_to_bf16`) and int8 inference (`quantize_learner`)."""
import warnings

import pytest
import torch
from conftest import make_reviews, tiny_dls
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import load_learner
from fastai.torch_core import set_seed
from torch import nn

import blurlite.mixed_precision as mp
from blurlite.learner import hf_learner
from blurlite.mixed_precision import (BF16EmulationWarning, CPUMixedPrecision, QuantizedInference, cpu_bf16_support,
                                      hf_to_bf16, hf_to_fp32, quantize_learner)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny models gain nothing from threads, and one thread stays fast on a busy machine (no spinning workers)."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def native_bf16(monkeypatch):
    "Tests run the same on any CPU: bf16 counts as native unless a test says otherwise (no warning)."
    monkeypatch.setattr(mp, "cpu_bf16_support", lambda: (True, "assumed in tests"))


def bf16_learner(tiny_objects, n=60, **kwargs):
    set_seed(0)
    return hf_to_bf16(hf_learner(tiny_dls(make_reviews(n), tiny_objects), tiny_objects.hf_model, **kwargs))


def train_loss(learn) -> float:
    return learn.validate(dl=learn.dls.train)[0]


class Dtypes(Callback):
    "Records the dtypes of a Linear layer's output, of `pred` and of the loss while training."
    order = 50  # after CPUMixedPrecision

    def __init__(self):
        self.linear, self.pred, self.loss = set(), set(), set()

    def before_fit(self):
        layer = next(m for m in self.learn.model.modules() if isinstance(m, nn.Linear))
        self.hook = layer.register_forward_hook(lambda m, i, out: self.linear.add(out.dtype))

    def after_loss(self):
        self.pred.add(self.learn.pred.dtype)
        self.loss.add(self.learn.loss_grad.dtype)

    def after_fit(self):
        self.hook.remove()


def test_forward_runs_in_bf16_while_pred_and_loss_stay_fp32(tiny_objects):
    dtypes = Dtypes()
    learn = bf16_learner(tiny_objects, cbs=dtypes)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert dtypes.linear == {torch.bfloat16}
    assert dtypes.pred == {torch.float32} and dtypes.loss == {torch.float32}
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())  # float32 master weights


def test_model_loss_is_fp32_too(tiny_objects):
    dtypes = Dtypes()
    learn = bf16_learner(tiny_objects, use_hf_loss=True, cbs=dtypes)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert dtypes.linear == {torch.bfloat16} and dtypes.loss == {torch.float32}


def test_bf16_training_reduces_the_loss(tiny_objects):
    learn = bf16_learner(tiny_objects)
    before = train_loss(learn)
    with learn.no_bar(), learn.no_logging():
        learn.fit(6, 1e-2)
    assert train_loss(learn) < before - 0.02
    assert all(isinstance(v, float) for v in learn.recorder.values[-1])


def test_autocast_is_off_after_fit_and_predict(tiny_objects):
    learn = bf16_learner(tiny_objects)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
        assert not torch.is_autocast_enabled("cpu")
        learn.predict("a good film")  # no targets: no after_loss event
    assert not torch.is_autocast_enabled("cpu")


def test_hf_to_bf16_adds_one_callback_and_hf_to_fp32_removes_it(tiny_objects):
    learn = bf16_learner(tiny_objects)
    learn.hf_to_bf16()
    assert sum(isinstance(cb, CPUMixedPrecision) for cb in learn.cbs) == 1
    hf_to_fp32(learn)
    assert not any(isinstance(cb, (CPUMixedPrecision, MixedPrecision)) for cb in learn.cbs)


def test_cuda_learners_get_fastais_mixed_precision(tiny_objects, monkeypatch):
    monkeypatch.setattr(mp, "learner_device", lambda learn: torch.device("cuda"))
    learn = bf16_learner(tiny_objects)
    added = [cb for cb in learn.cbs if isinstance(cb, (CPUMixedPrecision, MixedPrecision))]
    assert len(added) == 1 and isinstance(added[0], MixedPrecision) and added[0].amp_mode.value == "bf16"


def test_cpu_callback_refuses_a_cuda_learner(tiny_objects, monkeypatch):
    learn = bf16_learner(tiny_objects)
    monkeypatch.setattr(mp, "learner_device", lambda learn: torch.device("cuda"))
    with pytest.raises(RuntimeError, match="runs on cuda: call hf_to_bf16"):
        with learn.no_bar(), learn.no_logging():
            learn.fit(1)


def export_and_load(learn, path):
    "`learn.export(path)`, then `load_learner(path)` (our own file), torch's pickle warnings silenced."
    learn.export(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_learner(path)


def test_bf16_learner_exports_with_its_callback(tiny_objects, tmp_path):
    learn = bf16_learner(tiny_objects)
    loaded = export_and_load(learn, tmp_path / "bf16.pkl")
    assert sum(isinstance(cb, CPUMixedPrecision) for cb in loaded.cbs) == 1
    assert loaded.predict("a good film")[0] == learn.predict("a good film")[0]


def test_warns_when_the_cpu_would_emulate_bf16(tiny_objects, monkeypatch):
    monkeypatch.setattr(mp, "cpu_bf16_support", lambda: (False, "no avx512_bf16 flag"))
    with pytest.warns(BF16EmulationWarning, match="emulated.*no avx512_bf16 flag"):
        bf16_learner(tiny_objects)


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True),
                                           ("fpu avx2 avx512f", False)])
def test_cpu_bf16_support_reads_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    supported, evidence = cpu_bf16_support(cpuinfo)  # the real function, on a made-up cpuinfo
    assert supported is native and str(cpuinfo) in evidence


def test_arm_features_line_is_read(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_bf16_support(cpuinfo)[0]


@pytest.fixture
def trained(tiny_objects):
    "A float32 learner trained until its predictions are not all near 0.5."
    set_seed(0)
    learn = hf_learner(tiny_dls(make_reviews(60), tiny_objects), tiny_objects.hf_model)
    with learn.no_bar(), learn.no_logging():
        learn.fit(6, 1e-2)
    return learn


def test_quantized_learner_agrees_with_fp32(trained):
    texts = make_reviews(40, seed=1).text.tolist()
    qlearn = quantize_learner(trained)
    expected, got = trained.hf_predict(texts, top_k=None), qlearn.hf_predict(texts, top_k=None)
    for e, g in zip(expected, got):
        scores = {r["label"]: r["score"] for r in g}
        assert all(abs(r["score"] - scores[r["label"]]) < 0.02 for r in e)
        if e[0]["score"] > 0.55:  # a clear decision does not flip
            assert g[0]["label"] == e[0]["label"]


def test_quantize_learner_leaves_the_original_and_cannot_train(trained):
    qlearn = quantize_learner(trained)
    assert not any(type(m).__module__.startswith("torch.ao") for m in trained.model.modules())
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in qlearn.model.modules())
    assert any(isinstance(cb, QuantizedInference) for cb in qlearn.cbs) and qlearn.dls is trained.dls
    with pytest.raises(RuntimeError, match="int8-quantized.*fine-tune the float32 learner"):
        with qlearn.no_bar(), qlearn.no_logging():
            qlearn.fit(1)


def test_quantized_learner_exports(trained, tmp_path):
    qlearn = quantize_learner(trained)
    loaded = export_and_load(qlearn, tmp_path / "int8.pkl")
    assert loaded.hf_predict(["a good film", "an awful plot"]) == qlearn.hf_predict(["a good film", "an awful plot"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of fastai's to_bf16/to_fp16 (this learner is on CPU)")
def test_fastai_to_bf16_on_a_cpu_learner_runs_bf16_and_to_fp16_warns(tiny_objects):
    "fastai's own methods on a blurlite learner on CPU: to_bf16 does what hf_to_bf16 does; to_fp16 says it would not."
    from fastai.callback.fp16 import MixedPrecision

    learn = hf_learner(tiny_dls(make_reviews(24), tiny_objects), tiny_objects.hf_model)
    learn.dls.cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BF16EmulationWarning)
        learn.to_bf16()
    assert [type(cb) for cb in learn.cbs if isinstance(cb, (CPUMixedPrecision, MixedPrecision))] == [CPUMixedPrecision]
    seen = []
    learn.add_cb(type("Spy", (Callback,), {"after_pred": lambda self: seen.append(self.learn.hf_outputs.logits.dtype),
                                            "order": 5})())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert seen and set(seen) == {torch.bfloat16}  # the forward pass ran in bf16
    hf_to_fp32(learn)
    with pytest.warns(UserWarning, match=r"to_fp16\(\) on a CPU trains in float32.*learn.to_bf16\(\)"):
        learn.to_fp16()
