import pytest
import torch
from conftest import make_reviews, tiny_dls
from fastai.text.all import Callback, CrossEntropyLossFlat
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from blurlite.learner import HFModelCallback, HFModelWrapper, hf_learner, hf_splitter

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, vocab_size=60)
ARCHS = {
    "bert": lambda: BertForSequenceClassification(BertConfig(**TINY)),
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**TINY, pad_token_id=1)),
    "distilbert": lambda: DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=60, dim=32, n_layers=3, n_heads=2, hidden_dim=64)),
    "electra": lambda: ElectraForSequenceClassification(ElectraConfig(**TINY, embedding_size=16)),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_splitter_groups_embeddings_blocks_and_head(arch):
    model = HFModelWrapper(ARCHS[arch]())
    groups = hf_splitter(model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # every parameter exactly once
    assert len(groups) == 3 + 2  # embeddings, 3 blocks, head
    embeddings = model.hf_model.get_input_embeddings().weight
    assert any(p is embeddings for p in groups[0])
    head = [m for m in model.hf_model.modules() if isinstance(m, torch.nn.Linear)][-1].weight
    assert any(p is head for p in groups[-1])
    blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len)
    for block, group in zip(blocks, groups[1:-1]):
        assert {id(p) for p in block.parameters()} == {id(p) for p in group}


def test_freeze_trains_the_head_only_and_unfreeze_everything(tiny_objects, reviews):
    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model)
    learn.freeze()
    groups = hf_splitter(learn.model)
    layer_norms = {id(p) for m in learn.model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    frozen = [p for g in groups[:-1] for p in g if id(p) not in layer_norms]  # fastai's train_bn keeps norms trainable
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in groups[-1])
    embeddings = learn.model.hf_model.get_input_embeddings().weight.detach().clone()
    head = learn.model.hf_model.classifier.weight.detach().clone()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    assert torch.equal(embeddings, learn.model.hf_model.get_input_embeddings().weight)
    assert not torch.equal(head, learn.model.hf_model.classifier.weight)
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_slice_gives_discriminative_learning_rates(tiny_objects, reviews):
    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, slice(1e-5, 1e-3))
    lrs = [h["lr"] for h in learn.opt.hypers]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3)
    assert lrs == sorted(lrs)


def test_fine_tune_runs_frozen_then_unfrozen(tiny_objects, reviews):
    frozen_at_fit = []

    class RecordFrozen(Callback):
        def before_fit(self):
            frozen_at_fit.append(self.learn.opt.frozen_idx)

    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model, cbs=RecordFrozen())
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert frozen_at_fit == [3, 0]  # head only (of 4 groups), then everything


def test_fastai_loss_on_logits_by_default(tiny_objects, reviews):
    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model)
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    learn.validate()
    assert learn.hf_outputs.loss is None  # labels are not given to the model
    assert learn.hf_outputs.logits.shape[-1] == 2


def test_model_loss_when_asked_equals_fastai_loss(tiny_objects, reviews):
    dls = tiny_dls(reviews, tiny_objects)
    fastai_loss = hf_learner(dls, tiny_objects.hf_model).validate()[0]
    learn = hf_learner(dls, tiny_objects.hf_model, use_hf_loss=True)
    hf_loss = learn.validate()[0]
    assert learn.hf_outputs.loss is not None
    assert hf_loss == pytest.approx(fastai_loss, abs=1e-5)


def test_model_loss_is_what_training_optimises(tiny_objects, reviews):
    seen = []

    class RecordLoss(Callback):
        order = 50

        def after_loss(self):
            if self.training:
                seen.append((self.learn.loss_grad, self.learn.hf_outputs.loss))

    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model, use_hf_loss=True, cbs=RecordLoss())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert seen and all(loss_grad is hf_loss for loss_grad, hf_loss in seen)


def test_hf_outputs_reachable_from_a_callback(tiny_objects, reviews):
    shapes = []

    class Peek(Callback):
        def after_pred(self):
            shapes.append(tuple(self.learn.hf_outputs.logits.shape))

    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model, cbs=Peek())
    learn.validate()
    assert shapes and all(s[1] == 2 for s in shapes)


def test_hf_outputs_are_not_exported(tiny_objects, reviews, tmp_path):
    from fastai.learner import load_learner

    learn = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model)
    learn.validate()
    cb = next(cb for cb in learn.cbs if isinstance(cb, HFModelCallback))
    assert cb.model_outputs is not None
    learn.export(tmp_path / "export.pkl")
    loaded = next(c for c in load_learner(tmp_path / "export.pkl").cbs if isinstance(c, HFModelCallback))
    assert loaded.model_outputs is None and loaded.use_hf_loss is False
    assert cb.model_outputs is not None  # exporting leaves the live learner's outputs alone


def test_summary_walks_the_dict_batch(tiny_objects, reviews):
    summary = hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model).summary()
    assert "HFModelWrapper (Input shape: 8 x" in summary and "Total params" in summary


def test_head_size_must_match_the_labels(tiny_objects):
    df = make_reviews(60, n_classes=3)
    with pytest.raises(ValueError, match="2 outputs but the label vocab has 3 labels.*num_labels': 3"):
        hf_learner(tiny_dls(df, tiny_objects), tiny_objects.hf_model)


def test_learns_a_learnable_task(tiny_bert_dir):
    from fastai.torch_core import set_seed

    from blurlite.all import HFTextDataLoaders

    set_seed(0)  # python's random too: fastai's shuffling draws from it
    dls = HFTextDataLoaders.from_df(make_reviews(200), tiny_bert_dir, valid_col="is_valid", bs=16)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(10, 5e-3)
    assert learn.validate()[1] >= 0.9


def test_the_wrapper_passes_the_model_only_its_inputs(tiny_objects):
    "Explicit non-model keys are left out; without them, as the HF Trainer, only keys forward() names are passed."
    batch = {"input_ids": torch.tensor([[2, 5, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "word_ids": torch.tensor([[-1, 0, -1]])}
    model = tiny_objects.hf_model.eval()
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for wrapper in (HFModelWrapper(model), HFModelWrapper(model, non_model_keys={"word_ids"})):
        assert set(wrapper.model_inputs(batch)) == {"input_ids", "attention_mask"}
        assert torch.equal(wrapper(batch).logits, expected)
    assert "word_ids" in HFModelWrapper(model, non_model_keys=()).model_inputs(batch)  # declared none: all passed


# the default optimizer: fastai's Adam, computed by torch's fused AdamW
def _fit_with(opt_func, tiny_bert_dir, **fit):
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
    from fastai.torch_core import set_seed

    from blurlite.all import HFTextDataLoaders

    set_seed(0)
    dls = HFTextDataLoaders.from_df(make_reviews(64), tiny_bert_dir, valid_col="is_valid", bs=8, seed=0)
    learn = hf_learner(dls, **({} if opt_func is None else {"opt_func": opt_func}))
    set_seed(0)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(2, fit.get("lr", 1e-3))
    return learn


def test_the_default_optimizer_is_fastais_adam_as_fused_adamw(tiny_bert_dir):
    "Same update as fastai's Adam (defaults, decoupled weight decay, none on norms and biases), to float rounding."
    from fastai.optimizer import Adam

    from blurlite.all import HFAdamW

    ours, fastais = _fit_with(None, tiny_bert_dir), _fit_with(Adam, tiny_bert_dir)
    assert isinstance(ours.opt, HFAdamW) and all(pg["fused"] for pg in ours.opt.opt.param_groups)
    for (name, a), b in zip(ours.model.named_parameters(), fastais.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert list(map(float, ours.recorder.values[-1])) == pytest.approx(list(map(float, fastais.recorder.values[-1])), abs=1e-5)


def test_the_default_optimizer_keeps_freeze_discriminative_lrs_and_the_one_cycle_momentum(tiny_bert_dir):
    from fastai.optimizer import Adam

    learn, fastais = _fit_with(None, tiny_bert_dir), _fit_with(Adam, tiny_bert_dir)
    for each in (learn, fastais):
        each.freeze()
    trainable = [p.requires_grad for p in learn.model.parameters()]
    assert trainable == [p.requires_grad for p in fastais.model.parameters()]  # the head, and norms (train_bn)
    assert 0 < sum(trainable) < len(trainable)
    learn.unfreeze()
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, slice(1e-5, 1e-3))
    lrs = [h["lr"] for h in learn.opt.hypers]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3) and lrs == sorted(lrs)
    moms = [m for m in learn.recorder.moms]
    assert len(learn.recorder.moms) and min(moms) < max(moms)  # one-cycle scheduled AdamW's beta1
    assert learn.opt.opt.param_groups[0]["betas"][0] == pytest.approx(learn.opt.hypers[0]["mom"])


def _ops_per_step(learn) -> int:
    "aten ops dispatched by one optimizer step, after a backward pass."
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    x, y = learn.dls.one_batch()
    learn.loss_func(learn.model(x).logits, y).backward()
    learn.opt.step()  # the first step also creates the state: count a later one
    with Count():
        learn.opt.step()
    return Count.n


def test_an_optimizer_step_dispatches_under_a_third_of_fastais_adam_ops(tiny_bert_dir):
    from fastai.optimizer import Adam

    ours, fastais = _fit_with(None, tiny_bert_dir), _fit_with(Adam, tiny_bert_dir)
    n_ours, n_fastai = _ops_per_step(ours), _ops_per_step(fastais)
    assert n_ours * 3 <= n_fastai, (n_ours, n_fastai)
