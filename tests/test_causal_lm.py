"""Causal LM: packing, targets, loss and metrics, generation against transformers' text-generation pipeline,
training from scratch (GPT-2, Llama), the command line, several processes, bad input. The contract tests
(test_task_contract, test_serialization, test_adapters) cover show_batch/show_results, export, save_pretrained,
the pipeline on the artifact and LoRA for this task too."""
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from conftest import child_process_env, make_reviews
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.torch_core import set_seed
from transformers import AutoModelForCausalLM, pipeline

import blurlite.cli as cli
from blurlite.all import (CausalLMLossFlat, HFCausalLMDataLoaders, get_hf_objects, hf_learner, hf_splitter,
                          load_pretrained_learner, pack_texts, read_texts)

PROMPTS = ["the movie was", "a good film and the actor was very", "bad"]


def gpt2_objects(path):
    return get_hf_objects(path, model_cls=AutoModelForCausalLM)


def reviews(n=64):
    return make_reviews(n)[["text", "is_valid"]]


@pytest.fixture
def untrained(tiny_gpt2_dir):
    "A learner on the tiny GPT-2 as it is (random weights: generation runs to max_new_tokens, seldom stopping)."
    dls = HFCausalLMDataLoaders.from_df(reviews(), tiny_gpt2_dir, block_size=24, valid_col="is_valid", bs=8)
    return hf_learner(dls)


def test_packing_keeps_every_token_in_order_and_splits_by_text(tiny_gpt2_dir):
    objects = gpt2_objects(tiny_gpt2_dir)
    tok, df = objects.hf_tokenizer, reviews()
    dls = HFCausalLMDataLoaders.from_df(df, objects, block_size=16, valid_col="is_valid", bs=4)
    for ds, rows in ((dls.train_ds, df[~df.is_valid]), (dls.valid_ds, df[df.is_valid])):
        blocks = [ds[i][0]["input_ids"].tolist() for i in range(len(ds))]
        assert all(len(b) == 16 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 16  # the last block is kept
        expected = [i for t in rows.text for i in tok(t)["input_ids"] + [tok.eos_token_id]]
        assert sum(blocks, []) == expected  # every token of the split's texts, in order, each text ending in eos
    n = len(tok("good movie")["input_ids"]) + len(tok("bad")["input_ids"]) + 2
    assert pack_texts(["good movie", "bad"], tok, n - 1)[-1] == [tok.eos_token_id]  # a one-token last block stays


def test_a_tokenizer_without_pad_token_pads_with_eos_masked_out_but_text_ends_stay_targets(tiny_gpt2_dir):
    objects = gpt2_objects(tiny_gpt2_dir)
    tok = objects.hf_tokenizer
    n_tokens = len(tok)
    assert tok.pad_token is None  # as GPT-2's
    dls = HFCausalLMDataLoaders.from_df(reviews(), objects, block_size=32, valid_col="is_valid", bs=8, packing=False)
    assert tok.pad_token_id == tok.eos_token_id and len(tok) == n_tokens
    x, y = dls.valid.one_batch()
    assert (x["attention_mask"] == 0).any()  # texts of different lengths: padded, on the right
    assert (y[x["attention_mask"] == 0] == -100).all() and torch.equal(y[x["attention_mask"] == 1],
                                                                        x["input_ids"][x["attention_mask"] == 1])
    ends = x["attention_mask"].sum(1) - 1
    assert (y[torch.arange(len(y)), ends] == tok.eos_token_id).all()  # each text's eos is a target
    assert (x["attention_mask"][:, 0] == 1).all()


def test_the_fastai_loss_equals_the_models_own_loss_and_use_hf_loss_trains(untrained, tiny_gpt2_dir):
    dls = HFCausalLMDataLoaders.from_df(reviews(), tiny_gpt2_dir, block_size=32, valid_col="is_valid", bs=8,
                                        packing=False)
    x, y = dls.valid.one_batch()
    model = dls.hf_model.eval()
    with torch.no_grad():
        out = model(**x, labels=y.as_subclass(torch.Tensor))
    assert float(CausalLMLossFlat()(out.logits, y)) == pytest.approx(float(out.loss), abs=1e-6)
    set_seed(0)
    learn = hf_learner(dls, use_hf_loss=True)
    before = learn.validate()[0]
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(2, 1e-2)
    assert learn.validate()[0] < before


def test_perplexity_and_accuracy_are_over_every_validation_token(tiny_gpt2_dir):
    "exp of the mean next-token loss over the whole set (batches of different token counts), not of batch means."
    dls = HFCausalLMDataLoaders.from_df(reviews(80), tiny_gpt2_dir, block_size=32, valid_col="is_valid", bs=5,
                                        packing=False)
    learn = hf_learner(dls)
    with learn.no_bar():
        loss, ppl, acc = learn.validate()
    total, hits, count, batch_ppl = 0.0, 0, 0, []
    model = learn.model.hf_model.eval()
    with torch.no_grad():
        for x, y in dls.valid:
            logits = model(**x).logits[:, :-1]
            targ = y[:, 1:].as_subclass(torch.Tensor)
            keep = targ != -100
            nll = F.cross_entropy(logits[keep], targ[keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
            hits += int((logits[keep].argmax(-1) == targ[keep]).sum())
            batch_ppl.append(math.exp(float(nll) / int(keep.sum())))
    assert len(batch_ppl) > 1
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-5) and acc == pytest.approx(hits / count)
    assert ppl != pytest.approx(np.mean(batch_ppl), rel=1e-6)


def test_greedy_and_beam_generation_equal_the_pipeline_on_the_artifact(untrained, tmp_path):
    path = untrained.save_pretrained(tmp_path / "artifact")
    pipe = pipeline("text-generation", model=str(path))
    for settings in ({"do_sample": False}, {"do_sample": False, "num_beams": 3, "num_return_sequences": 2}):
        ours = untrained.generate(PROMPTS, max_new_tokens=12, **settings)
        theirs = [pipe(p, max_new_tokens=12, **settings) for p in PROMPTS]
        assert ours == theirs, settings
        assert [len(r) for r in ours] == [settings.get("num_return_sequences", 1)] * len(PROMPTS)
        assert all(g["generated_text"].startswith(p) for p, r in zip(PROMPTS, ours) for g in r)
        assert any(len(g["generated_text"]) > len(p) + 5 for p, r in zip(PROMPTS, ours) for g in r)
    assert load_pretrained_learner(path).generate(PROMPTS, max_new_tokens=12) == \
        untrained.generate(PROMPTS, max_new_tokens=12)


def test_batches_pad_on_the_left_and_give_what_one_prompt_at_a_time_gives(untrained):
    tok = untrained.dls.train_ds.tls[0].tfms.fs[-1].hf_tokenizer
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 1  # the batch needs padding
    batched = untrained.generate(PROMPTS, max_new_tokens=10, bs=3)
    assert batched == [untrained.generate(p, max_new_tokens=10) for p in PROMPTS]
    assert tok.padding_side == "right"  # the learner's tokenizer is left as it was
    assert untrained.predict(PROMPTS[0])[0] == untrained.generate(PROMPTS[0])[0]["generated_text"]


def test_sampling_is_reproducible_under_a_seed(untrained):
    def sample(seed):
        set_seed(seed)
        return untrained.generate(PROMPTS, max_new_tokens=12, do_sample=True, top_k=0, temperature=1.5)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_decoder_trains_from_scratch_with_a_tokenizer_of_its_own(arch, tmp_path):
    "get_hf_objects(tokenizer_dir, config=..., pretrained=False): special ids from the tokenizer, perplexity falls."
    from arch_zoo import SMALL, byte_bpe, metaspace_bpe

    if arch == "gpt2":
        vocab, merges = byte_bpe(("<|endoftext|>",))
        tok = tf.GPT2Tokenizer(vocab=vocab, merges=merges)
        config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(tok))  # eos 50256
    else:
        vocab, merges = metaspace_bpe(("<unk>", "<s>", "</s>"))
        tok = tf.LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)  # as Llama's: <s> first
        config = tf.LlamaConfig(**SMALL, num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=64)
    tok.save_pretrained(tmp_path)
    objects = get_hf_objects(tmp_path, model_cls=AutoModelForCausalLM, config=config, pretrained=False)
    assert objects.hf_config.eos_token_id == objects.hf_tokenizer.eos_token_id
    assert objects.hf_model.generation_config.eos_token_id == objects.hf_tokenizer.eos_token_id
    set_seed(0)
    dls = HFCausalLMDataLoaders.from_df(make_reviews(160)[["text", "is_valid"]], objects, block_size=32,
                                        valid_col="is_valid", bs=8)
    if arch == "llama":  # its tokenizer starts each text with <s>: packed blocks keep it
        assert dls.train_ds[0][0]["input_ids"][0] == objects.hf_tokenizer.bos_token_id
    learn = hf_learner(dls)
    with learn.no_bar():
        before = learn.validate()[1]
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(4, 1e-2)
        after = learn.validate()[1]
    assert after < before / 3, (before, after)
    groups = hf_splitter(learn.model)
    assert len(groups) == 4  # embeddings, two decoder blocks, head (final norm; Llama's untied output layer)
    learn.freeze()
    trainable = {id(p) for p in learn.model.parameters() if p.requires_grad}
    assert {id(p) for p in groups[-1]} <= trainable  # the head; fastai also trains norms (train_bn)
    embeddings = learn.model.hf_model.get_input_embeddings().weight
    assert id(embeddings) not in trainable and not any(id(p) in trainable for p in groups[1] if p.ndim == 2)
    with pytest.raises(ValueError, match="vocab_size=10 is smaller than the tokenizer's"):
        get_hf_objects(tmp_path, model_cls=AutoModelForCausalLM, config=type(config)(vocab_size=10),
                       pretrained=False)


def test_read_texts_cuts_paragraphs_or_lines(tmp_path):
    f = tmp_path / "play.txt"
    f.write_text("ROMEO:\nBut soft!\n\n\nJULIET:\nAy me.\n")
    assert read_texts(f) == (["ROMEO:\nBut soft!", "JULIET:\nAy me."], "paragraphs")
    assert read_texts(f, "lines") == (["ROMEO:", "But soft!", "JULIET:", "Ay me."], "lines")
    f.write_text("one\ntwo\n\n")
    assert read_texts(f) == (["one", "two"], "lines")  # trailing blank lines separate nothing


def test_from_texts_reads_a_list_or_a_file(tiny_gpt2_dir, tmp_path):
    texts = list(make_reviews(40).text)
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(texts))  # no blank line: one text per line
    kwargs = dict(block_size=16, bs=4, seed=0)
    from_file = HFCausalLMDataLoaders.from_texts(f, tiny_gpt2_dir, **kwargs)
    from_list = HFCausalLMDataLoaders.from_texts(texts, tiny_gpt2_dir, **kwargs)
    blocks = [[ds[i][0]["input_ids"].tolist() for i in range(len(ds))] for ds in (from_file.train_ds, from_list.train_ds)]
    assert blocks[0] == blocks[1] and len(blocks[0]) > 4
    with pytest.raises(FileNotFoundError, match="no text file"):
        HFCausalLMDataLoaders.from_texts(tmp_path / "missing.txt", tiny_gpt2_dir)


def test_the_command_line_trains_on_a_text_file_and_predicts_with_max_new_tokens(tiny_gpt2_dir, tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(make_reviews(60).text))
    out = tmp_path / "model"
    code = cli.main(["train", "--task", "clm", "--data", str(data), "--model", str(tiny_gpt2_dir), "--block-size",
                     "16", "--epochs", "1", "--bs", "4", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "60 texts, one per blank-line-separated paragraph" in captured.err
    assert json.loads((out / "blurlite.json").read_text())["task_settings"] == {"block_size": 16}
    assert cli.main(["predict", str(out), "the movie", "bad", "--max-new-tokens", "5"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == load_pretrained_learner(out).generate(["the movie", "bad"], max_new_tokens=5)
    assert cli.main(["predict", str(out), "the movie", "--max-new-tokens", "0"]) != 0
    assert "--max-new-tokens must be a positive int" in capsys.readouterr().err


def test_block_size_is_refused_by_tasks_without_blocks(tiny_bert_dir, reviews_csv, capsys):
    code = cli.main(["train", "--data", str(reviews_csv), "--model", str(tiny_bert_dir), "--block-size", "16"])
    err = capsys.readouterr().err
    assert code != 0 and "--block-size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("frame, kwargs, message", [
    (reviews(), dict(block_size=65), "block_size=65 is past the model's 64 positions"),
    (reviews(), dict(block_size=1), "block_size must be an int of at least 2"),
    (reviews().iloc[:0], {}, "empty"),
    (pd.DataFrame({"text": ["good", "  ", "bad"]}), {}, "row 1 holds an empty text"),
    (pd.DataFrame({"text": ["good", None]}), {}, "row 1"),
    (reviews(8), dict(bs=64, valid_pct=0.25), "bs"),
])
def test_bad_input_gets_a_clear_error(tiny_gpt2_dir, frame, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HFCausalLMDataLoaders.from_df(frame, tiny_gpt2_dir, **{"block_size": 16, **kwargs})


def test_texts_past_block_size_are_truncated_with_a_warning_and_blocks_are_checked(tiny_gpt2_dir):
    long = pd.DataFrame({"text": ["the movie was good " * 8, "bad", "a film"] * 4})  # 3 distinct texts
    with pytest.warns(UserWarning, match="1 of 3 texts are longer than max_length=8 tokens"):
        dls = HFCausalLMDataLoaders.from_df(long, tiny_gpt2_dir, block_size=8, bs=2, packing=False, valid_pct=0)
    assert max(len(dls.train_ds[i][0]["input_ids"]) for i in range(len(dls.train_ds))) == 8
    with pytest.raises(TypeError, match="takes block_size"):
        HFCausalLMDataLoaders.from_df(long, tiny_gpt2_dir, max_length=8)
    with pytest.raises(TypeError, match="packing must be True or False"):
        HFCausalLMDataLoaders.from_df(long, tiny_gpt2_dir, packing="no")
    from fastai.data.all import ColReader, DataBlock, IndexSplitter

    from blurlite.all import HFCausalLMBlock

    objects = gpt2_objects(tiny_gpt2_dir)
    dblock = DataBlock(blocks=HFCausalLMBlock(*objects, max_length=8), get_x=ColReader("ids"),
                       splitter=IndexSplitter([]))
    with pytest.raises(ValueError, match=f"token id 100000 is not in the tokenizer's vocabulary"):
        dblock.dataloaders(pd.DataFrame({"ids": [[1, 2, 3], [4, 100000]]}), bs=1)
    with pytest.raises(ValueError, match="row 1.*the text is empty"):
        dblock.dataloaders(pd.DataFrame({"ids": ["good", " "]}), bs=1)


def test_bad_generation_requests_get_clear_errors(untrained, tiny_bert_dir):
    with pytest.raises(ValueError, match="past the model's 64 positions"):
        untrained.generate("the movie was", max_new_tokens=63)
    with pytest.raises(TypeError, match="prompt 1: expected a str"):
        untrained.generate(["the movie", 3])
    with pytest.raises(ValueError, match="no end-of-text"):  # BERT's tokenizer has no eos
        HFCausalLMDataLoaders.from_df(reviews(), get_hf_objects(tiny_bert_dir, model_cls=AutoModelForCausalLM))
    classifier = hf_learner(cli_free_classifier_dls(tiny_bert_dir))
    with pytest.raises(TypeError, match="generate is for tasks that generate text"):  # the core's message
        classifier.generate("the movie")


def cli_free_classifier_dls(path):
    from blurlite.all import HFTextDataLoaders

    return HFTextDataLoaders.from_df(make_reviews(40), path, valid_col="is_valid", bs=8)


DISTRIBUTED_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from conftest import make_reviews
from fastai.callback.schedule import fit_one_cycle  # noqa: F401
from fastai.torch_core import set_seed
from blurlite.all import HFCausalLMDataLoaders, hf_learner

set_seed(0)
dls = HFCausalLMDataLoaders.from_df(make_reviews(96)[["text", "is_valid"]], sys.argv[2], block_size=16,
                                    valid_col="is_valid", bs=4)
learn = hf_learner(dls)
with learn.distrib_ctx():
    learn.fit_one_cycle(1, 1e-3)
    scores = learn.validate()
learn.save_pretrained(sys.argv[3])
json.dump([float(v) for v in scores], open(os.path.join(sys.argv[4], f"rank{os.environ['RANK']}.json"), "w"))
"""


def test_two_processes_train_and_validate_every_token_once(tiny_gpt2_dir, tmp_path):
    "distrib_ctx on 2 CPU processes: every rank's perplexity is the one-process perplexity of the trained model."
    import subprocess
    from pathlib import Path

    if not torch.distributed.is_available():
        pytest.fail("this torch has no torch.distributed")
    script = tmp_path / "train_clm.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(Path(__file__).parent), str(tiny_gpt2_dir), str(out), str(tmp_path)],
                          env=child_process_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    learn = load_pretrained_learner(out)
    one = hf_learner(HFCausalLMDataLoaders.from_df(make_reviews(96)[["text", "is_valid"]], tiny_gpt2_dir,
                                                   block_size=16, valid_col="is_valid", bs=4), learn.model.hf_model)
    with one.no_bar(), one.no_logging():
        scores = one.validate()
    assert ranks[0] == pytest.approx([float(v) for v in scores], abs=1e-5)
