"""Sequence to sequence (summarization, translation, any text-to-text task): (text, target) pairs, the model's token
loss, ROUGE/BLEU from generated text, and generation as transformers 4.57.6's `pipeline("text2text-generation")`
answered (transformers 5 removed it).

Inputs (`prefix + text`) and targets (the tokenizer's target mode) are tokenized once; batches pad inputs with the
tokenizer's pad token and targets with -100, each to its own longest, bucketed by input length. The decoder's inputs
are made from the targets by the model itself (`prepare_decoder_input_ids_from_labels`, its own shift), in
`Seq2SeqDecoderInputs`. Any `AutoModelForSeq2SeqLM` works, and `hf_encoder_decoder` warm-starts transformers'
`EncoderDecoderModel` from encoder checkpoints (e.g. MiniLM, which installs offline).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Metric
from fastai.text.core import TitledStr
from fastai.torch_core import display_df
from fasttransform import Transform
from plum import dispatch
from transformers import AutoModelForSeq2SeqLM, GenerationConfig

from ..adapters import plain_model
from ..checks import check_columns, check_frame, check_texts, describe_item, is_missing
from ..data import (IGNORE_INDEX, HFSortedDL, HFTextInput, HFTokenize, TensorTokenLabels, find_hf_transform,
                    model_max_length, split_rows, tokenizer_pad_values, truncate_words)
from ..hf_objects import HFObjects, get_hf_objects
from ..ranks import gather_rows
from . import HFTask, register_task, task_for, texts_and_lines
from .masked_lm import MaskedLMLossFlat, MaskedLMMetric

__all__ = ["HFSeq2SeqInput", "Seq2SeqTargetIds", "HFTokenizeSeq2Seq", "HFTokenizeTargets", "HFSeq2SeqDL",
           "HFSeq2SeqBlock", "HFSeq2SeqDataLoaders", "Seq2SeqDecoderInputs", "Seq2SeqLossFlat", "GenerationMetric",
           "rouge", "rouge1", "rouge2", "bleu", "seq2seq_perplexity", "hf_encoder_decoder", "generate_seq2seq",
           "pipeline_generation_config"]

TASK_NAME = "seq2seq"
DEFAULT_MAX_LENGTH, DEFAULT_MAX_TARGET_LENGTH = 512, 128
# transformers 4.57.6's Text2TextGenerationPipeline._default_generation_config: what its pipeline generated with
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "num_beams": 4}
SCORES = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")


class HFSeq2SeqInput(HFTextInput):
    "Token ids (and attention mask) of a sequence-to-sequence input text: `prefix + text`."


class Seq2SeqTargetIds(TensorTokenLabels):
    "A target's token ids; a batch pads them with -100 to its longest target (not to the inputs' length)."


# data
def _target_ids(hf_tokenizer, texts: list[str], max_length: int | None) -> list[list[int]]:
    "The targets' token ids, in the tokenizer's target mode (`text_target`: e.g. Marian's target vocabulary)."
    if not texts:
        return []
    return hf_tokenizer(text_target=texts, truncation=max_length is not None, max_length=max_length,
                        return_attention_mask=False)["input_ids"]


class HFTokenizeSeq2Seq(HFTokenize):
    "Tokenize `prefix + text` once (the pipeline's input), truncated to `max_length`, without token type ids."
    input_type = HFSeq2SeqInput

    def __init__(self, hf_tokenizer, max_length: int | None = None, truncation=True, tok_kwargs: dict | None = None,
                 prefix: str = ""):
        super().__init__(hf_tokenizer, max_length=max_length, truncation=truncation,
                         tok_kwargs={"return_token_type_ids": False, **(tok_kwargs or {})})
        self.prefix = prefix

    def key(self, x, where=lambda: "input", labelled=False):
        if not isinstance(x, str):
            key = super().key(x, where, labelled)  # names missing and non-str texts
            raise TypeError(f"{where()}: sequence to sequence takes one text per item, got {key!r}")
        if labelled and not x.strip():
            raise ValueError(f"{where()}: the text is empty; drop empty rows")
        return x

    def tokenize(self, keys: list) -> list[HFSeq2SeqInput]:
        return [HFSeq2SeqInput(x) for x in super().tokenize([self.prefix + k for k in keys])]

    def decodes(self, x: HFSeq2SeqInput) -> TitledStr:
        "The input text as the model reads it (prefix included), special tokens dropped."
        return TitledStr(self.hf_tokenizer.decode(x["input_ids"].tolist(), skip_special_tokens=True))


class HFTokenizeTargets(Transform):
    "Tokenize every target once, in the tokenizer's target mode, truncated to `max_target_length`."
    train_setup = False  # training and validation targets alike
    _retain = False

    def __init__(self, hf_tokenizer, max_target_length: int | None = DEFAULT_MAX_TARGET_LENGTH):
        super().__init__()
        self.hf_tokenizer, self.max_target_length, self._cache = hf_tokenizer, max_target_length, {}

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}  # an exported learner does not carry its training targets

    def setups(self, items):
        for i in range(len(items)):
            value = items[i]
            if is_missing(value) or not isinstance(value, str) or not value.strip():
                what = "missing" if is_missing(value) else "empty" if isinstance(value, str) else \
                    f"not a str but an {type(value).__name__}" if type(value).__name__[0] in "aeiou" else \
                    f"not a str but a {type(value).__name__}"
                raise ValueError(f"{describe_item(items, i)}: the target is {what} ({value!r}); every text needs a "
                                 "target text to learn from: drop or fill that row")
        unique = list(dict.fromkeys(items[i] for i in range(len(items))))
        self._cache = dict(zip(unique, _target_ids(self.hf_tokenizer, unique, self.max_target_length)))

    def encodes(self, x: str) -> Seq2SeqTargetIds:
        ids = self._cache.get(x)
        if ids is None:
            ids = _target_ids(self.hf_tokenizer, [x], self.max_target_length)[0]
        return Seq2SeqTargetIds(torch.tensor(ids, dtype=torch.long))

    def decodes(self, y: TensorTokenLabels) -> TitledStr:
        "Target (or predicted) token ids as text, special tokens and -100 dropped."
        return TitledStr(self.hf_tokenizer.decode([i for i in y.tolist() if i != IGNORE_INDEX],
                                                  skip_special_tokens=True))


class HFSeq2SeqDL(HFSortedDL):
    "`HFSortedDL` whose batches pad targets to the longest target (the decoder's length), not to the inputs'."

    def _collate_field(self, values: list, length: int | None = None):
        if isinstance(values[0], Seq2SeqTargetIds):  # on the right, whatever the inputs do: the decoder reads them so
            return type(values[0])(torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=IGNORE_INDEX))
        return super()._collate_field(values, length)


class HFSeq2SeqBlock(TransformBlock):
    """The input block of a sequence-to-sequence `DataBlock`: `prefix + text` tokenized once, padded per batch.

    Its target block is `HFSeq2SeqBlock.targets(hf_tokenizer, max_target_length)`.
    Example: `DataBlock(blocks=(HFSeq2SeqBlock(*hf_objects, max_length=512),
    HFSeq2SeqBlock.targets(hf_objects.hf_tokenizer)), get_x=ColReader("text"), get_y=ColReader("target"))`
    """

    def __init__(self, hf_arch, hf_config, hf_tokenizer, hf_model, max_length: int | None = DEFAULT_MAX_LENGTH,
                 padding=True, truncation=True, tok_kwargs: dict | None = None, prefix: str = ""):
        if hf_tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: batches of texts need one; set hf_tokenizer.pad_token")
        limit = model_max_length(hf_config, hf_tokenizer, hf_model)
        max_length = limit if max_length is None or (limit is not None and max_length > limit) else max_length
        tokenize = HFTokenizeSeq2Seq(hf_tokenizer, max_length=max_length, truncation=truncation,
                                     tok_kwargs=tok_kwargs, prefix=prefix)
        dls_kwargs = dict(pad_values=tokenizer_pad_values(hf_tokenizer), padding_side=hf_tokenizer.padding_side,
                          pad_to=max_length if padding == "max_length" else None, pad_limit=max_length)
        super().__init__(type_tfms=[tokenize], dl_type=HFSeq2SeqDL, dls_kwargs=dls_kwargs)

    @staticmethod
    def targets(hf_tokenizer, max_target_length: int | None = DEFAULT_MAX_TARGET_LENGTH) -> TransformBlock:
        "The target block: target texts tokenized once in the tokenizer's target mode, padded with -100."
        return TransformBlock(type_tfms=[HFTokenizeTargets(hf_tokenizer, max_target_length)])


class HFSeq2SeqDataLoaders(DataLoaders):
    "Factory for sequence-to-sequence `DataLoaders` from a DataFrame of (text, target) rows."

    @classmethod
    def from_df(cls, df: pd.DataFrame, hf_objects_or_checkpoint, text_col="text", target_col="target",
                prefix: str = "", max_length: int | None = DEFAULT_MAX_LENGTH,
                max_target_length: int | None = DEFAULT_MAX_TARGET_LENGTH, valid_col=None, valid_pct: float = 0.2,
                bs: int = 16, seed: int | None = None, padding=True, **kwargs) -> DataLoaders:
        """`DataLoaders` for sequence to sequence on `df[text_col]` -> `df[target_col]`, checked up front.

        Inputs are `prefix + text` (T5's "summarize: ", written into the model's config as `prefix`, as the
        pipeline reads it), truncated to `max_length` tokens; targets to `max_target_length`.
        `hf_objects_or_checkpoint`: what `get_hf_objects` or `hf_encoder_decoder` returns, or a checkpoint directory
        loaded with `AutoModelForSeq2SeqLM` (the model is then `dls.hf_model`).
        Example: `dls = HFSeq2SeqDataLoaders.from_df(df, hf_objects, prefix="summarize: ", bs=8)`
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        check_frame(df)
        check_columns(df, [text_col], "text")
        check_columns(df, [target_col], "target")
        check_texts(df[text_col], df.index, text_col)
        empty = [i for i, t in zip(df.index, df[text_col]) if not t.strip()]
        if empty:
            raise ValueError(f"column {text_col!r}: row {empty[0]!r} holds an empty text ({len(empty)} rows do)")
        hf_objects = hf_objects_or_checkpoint
        if not isinstance(hf_objects, tuple):
            hf_objects = get_hf_objects(hf_objects, model_cls=AutoModelForSeq2SeqLM)
        train, valid = split_rows(df, valid_col, valid_pct, seed)
        hf_tokenizer = hf_objects[2]
        dblock = DataBlock(blocks=(HFSeq2SeqBlock(*hf_objects, max_length=max_length, padding=padding, prefix=prefix),
                                   HFSeq2SeqBlock.targets(hf_tokenizer, max_target_length)),
                           get_x=ColReader(text_col), get_y=ColReader(target_col), splitter=IndexSplitter(valid))
        dls = dblock.dataloaders(df, bs=bs, **kwargs)
        dls.hf_model = hf_objects[3]
        return dls


def _targets_tfm(dls) -> HFTokenizeTargets:
    tfm = next((t for t in dls.train_ds.tls[1].tfms if isinstance(t, HFTokenizeTargets)), None) \
        if len(getattr(dls.train_ds, "tls", [])) > 1 else None
    if tfm is None:
        raise ValueError("these DataLoaders have no sequence-to-sequence targets (HFSeq2SeqBlock.targets)")
    return tfm


# models
def hf_encoder_decoder(encoder_ckpt, decoder_ckpt=None, **model_kwargs) -> HFObjects:
    """An encoder-decoder warm-started from encoder checkpoints (transformers' `EncoderDecoderModel`: the decoder
    gets causal masking and new cross-attention layers), as `get_hf_objects` returns it, with the encoder's tokenizer.

    Its decoder start, pad and end ids are the tokenizer's `[CLS]`/bos, pad and `[SEP]`/eos, set in the config and
    the generation config, so that `generate`, the saved artifact and transformers' pipelines work.
    Example: `hf_objects = hf_encoder_decoder(minilm_dir)`; `HFSeq2SeqDataLoaders.from_df(df, hf_objects)`
    """
    from transformers import AutoTokenizer, EncoderDecoderModel

    decoder_ckpt = encoder_ckpt if decoder_ckpt is None else decoder_ckpt
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(encoder_ckpt))
        dec_tokenizer = AutoTokenizer.from_pretrained(str(decoder_ckpt)) if decoder_ckpt != encoder_ckpt else None
        with warnings.catch_warnings():  # the decoder's new cross-attention layers are reported as newly initialised
            warnings.simplefilter("ignore")
            hf_model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                str(encoder_ckpt), str(decoder_ckpt),
                **{"encoder_dtype": torch.float32, "decoder_dtype": torch.float32, **model_kwargs})
    except OSError as e:
        raise OSError(f"could not load {encoder_ckpt!r} / {decoder_ckpt!r} as local encoder checkpoints ({e}): pass "
                      "directories holding config.json, the weights and the tokenizer") from e
    if dec_tokenizer is not None and dec_tokenizer.get_vocab() != hf_tokenizer.get_vocab():
        raise ValueError("the decoder's tokenizer differs from the encoder's: targets are read with one tokenizer, "
                         "so both checkpoints must share a vocabulary")
    start = hf_tokenizer.cls_token_id if hf_tokenizer.cls_token_id is not None else hf_tokenizer.bos_token_id
    eos = hf_tokenizer.sep_token_id if hf_tokenizer.sep_token_id is not None else hf_tokenizer.eos_token_id
    if start is None or eos is None or hf_tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a start ([CLS] or bos), an end ([SEP] or eos) and a pad token to "
                         "train and generate with an encoder-decoder")
    for config in (hf_model.config, hf_model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = start, hf_tokenizer.pad_token_id, eos
    hf_model.config.vocab_size = hf_model.config.decoder.vocab_size
    return HFObjects(hf_model.config.model_type, hf_model.config, hf_tokenizer, hf_model)


def _decoder_start(hf_model) -> int | None:
    gen = getattr(hf_model, "generation_config", None)
    start = getattr(gen, "decoder_start_token_id", None)
    return start if start is not None else getattr(hf_model.config, "decoder_start_token_id", None)


def _shift(hf_model, labels: torch.Tensor) -> torch.Tensor:
    "The decoder's inputs for `labels`, as the model makes them (its `prepare_decoder_input_ids_from_labels`)."
    if hasattr(hf_model, "prepare_decoder_input_ids_from_labels"):
        return hf_model.prepare_decoder_input_ids_from_labels(labels=labels)
    from transformers.models.bart.modeling_bart import shift_tokens_right  # the common shift

    return shift_tokens_right(labels, hf_model.config.pad_token_id, _decoder_start(hf_model))


class Seq2SeqDecoderInputs(Callback):
    """Give the model its decoder inputs: the targets shifted right by the model's own shift (as HF's
    `DataCollatorForSeq2Seq`), or the decoder start token alone when there are no targets (`predict`, `test_dl`)."""
    order = -6  # before HFModelCallback (-5) and the model

    def before_batch(self):
        x = self.xb[0] if len(self.xb) else None
        if not isinstance(x, Mapping) or "decoder_input_ids" in x:
            return
        hf_model = plain_model(getattr(self.learn.model, "module", self.learn.model).hf_model)
        ids = x["input_ids"]
        if len(self.yb):
            labels = self.yb[0].as_subclass(torch.Tensor)
            decoder_ids = _shift(hf_model, labels)
        else:
            decoder_ids = torch.full((len(ids), 1), _decoder_start(hf_model), dtype=torch.long, device=ids.device)
        self.learn.xb = ({**x, "decoder_input_ids": decoder_ids.to(ids.device)},)


# loss and metrics
class Seq2SeqLossFlat(MaskedLMLossFlat):
    "The mean token cross-entropy of the decoder's logits against the targets (-100 left out): the model's own loss."


seq2seq_perplexity = MaskedLMMetric("perplexity")

# one generation per validation batch and setting, shared by the metrics that ask for the same (rouge and bleu)
_GENERATED: dict = {}


def pipeline_generation_config(hf_model, hf_tokenizer=None) -> GenerationConfig:
    """The generation settings transformers 4.57.6's `pipeline("text2text-generation")` used for `hf_model`: its own
    defaults (`max_new_tokens=256`, `num_beams=4`), every other setting the model's generation config gives
    (decoder start, end, pad, ...); a model `max_length` other than 20 in place of `max_new_tokens`; the
    tokenizer's pad id if the model has none."""
    model_config = hf_model.generation_config
    default = GenerationConfig()
    config = GenerationConfig(**PIPELINE_DEFAULTS)
    for key, value in model_config.to_dict().items():
        if key.startswith("_") or key == "transformers_version" or not hasattr(default, key):
            continue
        if getattr(config, key, None) == getattr(default, key) and value != getattr(default, key):
            setattr(config, key, copy.deepcopy(value))
    if config.max_new_tokens == PIPELINE_DEFAULTS["max_new_tokens"] and config.max_length not in (None, 20):
        config.max_new_tokens = None
    if config.pad_token_id is None and hf_tokenizer is not None and hf_tokenizer.pad_token_id is not None:
        config.pad_token_id = hf_tokenizer.pad_token_id
    return config


def _generate_ids(hf_model, inputs: Mapping, hf_tokenizer, **settings) -> torch.Tensor:
    "`hf_model.generate` on tokenized inputs with the pipeline's generation config and `settings` on top."
    settings = dict(settings)
    given = settings.pop("generation_config", None)  # a caller's config replaces the pipeline's, as in the pipeline
    config = copy.deepcopy(given) if given is not None else pipeline_generation_config(hf_model, hf_tokenizer)
    config.update(**{k: v for k, v in settings.items() if hasattr(config, k)})
    extra = {k: v for k, v in settings.items() if not hasattr(config, k)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
        return hf_model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 generation_config=config, **extra)


def _decode(hf_tokenizer, ids) -> list[str]:
    "Token ids as text, as the pipeline decodes (special tokens skipped, tokenization spaces kept)."
    ids = [[i for i in row if i != IGNORE_INDEX] for row in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    return hf_tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class GenerationMetric(Metric):
    """A score of generated text against the targets, computed at the end of validation: "rouge1", "rouge2",
    "rougeL", "rougeLsum" (rouge-score's F1, mean over texts, 0-1) or "bleu" (sacrebleu's corpus BLEU, 0-100).

    Each validation batch is generated with settings of its own (`num_beams`, `max_new_tokens`: default the data's
    `max_target_length`, greedy); metrics with the same settings share one generation. `max_samples` scores only
    the first N validation texts (per process), to keep validation short. Under `distrib_ctx` the texts of every
    process are scored together. Example: `metrics=[GenerationMetric("rougeL", num_beams=4, max_samples=200)]`
    """

    def __init__(self, score: str = "rougeL", num_beams: int = 1, max_new_tokens: int | None = None,
                 max_samples: int | None = None, **generate_kwargs):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
        if generate_kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("a generation metric scores one generated text per target: num_return_sequences must be 1")
        self.score, self.max_samples = score, max_samples
        self.settings = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False,
                         **generate_kwargs}
        self.reset()

    def reset(self):
        self.preds, self.targs = [], []
        _GENERATED.clear()  # a new validation: nothing generated with earlier weights is reused

    def __getstate__(self):  # an exported learner carries no validation texts
        return {**self.__dict__, "preds": [], "targs": []}

    def _settings(self, learn) -> dict:
        settings = dict(self.settings)
        if settings["max_new_tokens"] is None:
            settings["max_new_tokens"] = _targets_tfm(learn.dls).max_target_length or DEFAULT_MAX_TARGET_LENGTH
        return settings

    def accumulate(self, learn):
        if self.max_samples is not None and len(self.preds) >= self.max_samples:
            return
        x, tokenizer = learn.xb[0], find_hf_transform(learn.dls).hf_tokenizer
        settings = self._settings(learn)
        key = (id(learn), tuple(sorted((k, repr(v)) for k, v in settings.items())))
        cached = _GENERATED.get(key)
        if cached is None or cached[0] is not x["input_ids"]:
            hf_model = plain_model(getattr(learn.model, "module", learn.model).hf_model)
            texts = _decode(tokenizer, _generate_ids(hf_model, x, tokenizer, **settings))
            _GENERATED.clear()  # one batch at a time: the cache holds the current batch only
            _GENERATED[key] = cached = (x["input_ids"], texts)
        room = len(cached[1]) if self.max_samples is None else self.max_samples - len(self.preds)
        self.preds += cached[1][:room]
        self.targs += _decode(tokenizer, learn.yb[0])[:room]

    def gather_from_ranks(self):
        "In a distributed validation (blurlite calls it on every rank): every rank's texts."
        pairs = gather_rows(list(zip(self.preds, self.targs)))
        self.preds, self.targs = [p for p, _ in pairs], [t for _, t in pairs]

    @property
    def value(self):
        if not self.preds:
            return None
        return score_texts(self.preds, self.targs, self.score)

    @property
    def name(self):
        return self.score


def score_texts(preds: list[str], targets: list[str], score: str) -> float:
    "`score` of `preds` against `targets`: rouge-score's F1 (mean, 0-1) or sacrebleu's corpus BLEU (0-100)."
    if score == "bleu":
        try:
            import sacrebleu
        except ImportError as e:
            raise ImportError("the bleu metric needs sacrebleu: pip install 'blurlite[seq2seq]'") from e
        return float(sacrebleu.corpus_bleu(preds, [targets]).score)
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError("the rouge metrics need rouge-score: pip install 'blurlite[seq2seq]'") from e
    scorer = rouge_scorer.RougeScorer([score])
    return float(sum(scorer.score(t, p)[score].fmeasure for p, t in zip(preds, targets)) / len(preds))


rouge, rouge1, rouge2, bleu = (GenerationMetric("rougeL"), GenerationMetric("rouge1"), GenerationMetric("rouge2"),
                               GenerationMetric("bleu"))


def _default_loss(dls):
    return Seq2SeqLossFlat()


def _default_metrics(dls) -> list:
    return [MaskedLMMetric("perplexity"), GenerationMetric("rouge1"), GenerationMetric("rouge2"),
            GenerationMetric("rougeL"), GenerationMetric("bleu")]


def _default_cbs(dls) -> list:
    return [Seq2SeqDecoderInputs()]


def _prefix(dls) -> str:
    return find_hf_transform(dls).prefix


def _prepare_model(dls, hf_model) -> None:
    "Check that `hf_model` is an encoder-decoder that can start decoding; write the input prefix into its config."
    model = plain_model(hf_model)
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{type(model).__name__} is not an encoder-decoder: load it with get_hf_objects(..., "
                         "model_cls=AutoModelForSeq2SeqLM), or warm-start one from an encoder (hf_encoder_decoder)")
    if _decoder_start(model) is None:
        raise ValueError("the model has no decoder_start_token_id: set hf_model.config.decoder_start_token_id and "
                         "hf_model.generation_config.decoder_start_token_id (e.g. the tokenizer's [CLS] or pad id)")
    head = model.get_output_embeddings()
    n_tokens = len(find_hf_transform(dls).hf_tokenizer)
    if head is not None and head.out_features < n_tokens:
        raise ValueError(f"the model predicts {head.out_features} tokens but the tokenizer has {n_tokens}: "
                         "call hf_model.resize_token_embeddings(len(hf_tokenizer))")
    model.config.prefix = _prefix(dls) or None  # what the pipeline puts before each text


# display
@dispatch
def show_batch(x: HFSeq2SeqInput, y, samples, ctxs=None, max_n=10, trunc_at=None, **kwargs):
    display_df(pd.DataFrame([{"text": truncate_words(s[0], trunc_at), "target": truncate_words(s[1], trunc_at)}
                             for s in samples[:max_n]]))
    return ctxs


def _show_results(learn, dl, max_n: int = 9, trunc_at=None, **settings) -> None:
    "Input, target and generated text (greedy unless `settings` say otherwise) of the first `max_n` items of `dl`."
    tokenizer = find_hf_transform(learn.dls).hf_tokenizer
    max_new_tokens = _targets_tfm(learn.dls).max_target_length or DEFAULT_MAX_TARGET_LENGTH
    rows, settings = [], {"num_beams": 1, "max_new_tokens": max_new_tokens, **settings}
    hf_model = plain_model(getattr(learn.model, "module", learn.model).hf_model)
    training = learn.model.training
    learn.model.eval()
    try:
        for b in dl:
            x = b[0]
            generated = _decode(tokenizer, _generate_ids(hf_model, x, tokenizer, **settings))
            targets = _decode(tokenizer, b[1]) if len(b) > 1 else [""] * len(generated)  # a test_dl has none
            for text, target, gen in zip(_decode(tokenizer, x["input_ids"]), targets, generated):
                rows.append({"text": truncate_words(text, trunc_at), "target": truncate_words(target, trunc_at),
                             "generated": truncate_words(gen, trunc_at)})
            if len(rows) >= max_n:
                break
    finally:
        learn.model.train(training)
    display_df(pd.DataFrame(rows[:max_n]))


# generation
def generate_seq2seq(learn, texts, max_new_tokens: int | None = None, num_beams: int | None = None,
                     do_sample: bool | None = None, bs: int = 16, truncation: bool = False, **generate_kwargs):
    """Generate from `texts` as transformers 4.57.6's `pipeline("text2text-generation")` did on the saved
    artifact: `model.generate` on `config.prefix + text` with the pipeline's generation config (its defaults
    `max_new_tokens=256`, `num_beams=4` unless given here, the model's generation config for the rest), decoded with
    `skip_special_tokens=True`. One text: `[{"generated_text": ...}]`; a list: one dict per text (a list per text
    with `num_return_sequences` > 1), as the pipeline answered. Texts go `bs` at a time, longest first, padded as
    the tokenizer pads; not truncated (as the pipeline), unless `truncation=True`.
    """
    if task_for(learn.dls).generate is not generate_seq2seq:
        raise TypeError(f"this generate is for sequence-to-sequence learners; this learner is for "
                        f"{task_for(learn.dls).name}")
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"text {bad}: expected a str, got {type(texts[bad]).__name__} {texts[bad]!r}")
    if bs < 1:
        raise ValueError(f"bs must be at least 1, got {bs}")
    if not texts:
        return []
    settings = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams),
                                  ("do_sample", do_sample)) if v is not None}
    settings.update(generate_kwargs)
    tfm = find_hf_transform(learn.dls)
    tokenizer, hf_model = tfm.hf_tokenizer, plain_model(getattr(learn.model, "module", learn.model).hf_model)
    prefix = getattr(hf_model.config, "prefix", None) or ""
    inputs = [prefix + t for t in texts]
    lengths = [len(ids) for ids in tokenizer(inputs, truncation=truncation)["input_ids"]]
    order = sorted(range(len(inputs)), key=lambda i: -lengths[i])
    device = next(hf_model.parameters()).device
    results = [None] * len(texts)
    training = learn.model.training
    learn.model.eval()
    try:
        for start in range(0, len(order), bs):
            idxs = order[start:start + bs]
            enc = tokenizer([inputs[i] for i in idxs], padding=len(idxs) > 1, truncation=truncation,
                            return_tensors="pt", return_token_type_ids=False).to(device)
            out = _decode(tokenizer, _generate_ids(hf_model, enc, tokenizer, **settings))
            per = len(out) // len(idxs)
            for j, i in enumerate(idxs):
                results[i] = [{"generated_text": t} for t in out[j * per:(j + 1) * per]]
    finally:
        learn.model.train(training)
    if single:
        return results[0]
    return [r[0] for r in results] if all(len(r) == 1 for r in results) else results


def _predict_result(learn, item, res: tuple) -> tuple:
    "`learn.predict(text)`: the generated text first (the pipeline's settings), then fastai's own outputs."
    return (generate_seq2seq(learn, item)[0]["generated_text"], *res[1:])


# saving and the command line
def _settings(dls) -> dict:
    return {"prefix": _prefix(dls), "max_target_length": _targets_tfm(dls).max_target_length}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free sequence-to-sequence `DataLoaders` with the saved learner's settings."
    dblock = DataBlock(blocks=(HFSeq2SeqBlock(*hf_objects, prefix=settings.get("prefix", ""), **block_kwargs),
                               HFSeq2SeqBlock.targets(hf_objects[2], settings.get("max_target_length"))),
                       get_x=ColReader("text"), get_y=ColReader("target"), splitter=IndexSplitter([]))
    return dblock.dataloaders(pd.DataFrame({"text": ["x"] * bs, "target": ["x"] * bs}), bs=bs).new_empty()


def _from_df(df, model, text_col="text", label_col="target", valid_col=None, valid_pct=0.2, bs=16, max_length=None,
             seed=None, prefix="", max_target_length=None):
    "The command line's `from_df`: `--label-col`/`--target-col` holds the targets."
    return HFSeq2SeqDataLoaders.from_df(df, model, text_col=text_col or "text", target_col=label_col or "target",
                                        prefix=prefix, max_length=max_length or DEFAULT_MAX_LENGTH,
                                        max_target_length=max_target_length or DEFAULT_MAX_TARGET_LENGTH,
                                        valid_col=valid_col, valid_pct=valid_pct, bs=bs, seed=seed)


def _predict_inputs(texts: list, options: dict, file) -> list:
    "Texts from the command line and `--file` (one per line), each with its `--max-new-tokens`/`--num-beams`."
    texts = texts_and_lines(texts, {}, file)
    settings = {}
    for flag in ("--max-new-tokens", "--num-beams"):
        values = options.get(flag, [])
        if len(values) > 1:
            raise ValueError(f"give {flag} once")
        if values:
            try:
                n = int(values[0])
            except ValueError:
                n = 0
            if n < 1:
                raise ValueError(f"{flag} must be a positive int, got {values[0]!r}")
            settings[flag[2:].replace("-", "_")] = n
    return [{"text": t, **settings} for t in texts] if settings else texts


def _predict_json(learn, inputs: list) -> list:
    "One `[{\"generated_text\": ...}]` per text (a str, or a dict with `text` and generation settings)."
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(inputs):
        settings = tuple(sorted((k, v) for k, v in x.items() if k != "text")) if isinstance(x, Mapping) else ()
        groups.setdefault(settings, []).append(i)
    out = [None] * len(inputs)
    for settings, idxs in groups.items():
        texts = [inputs[i]["text"] if isinstance(inputs[i], Mapping) else inputs[i] for i in idxs]
        results = generate_seq2seq(learn, texts, **dict(settings))
        for i, result in zip(idxs, results):  # one text's answer is a list, as the pipeline's for one text
            out[i] = result if isinstance(result, list) else [result]
    return out


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFSeq2SeqInput, auto_model=AutoModelForSeq2SeqLM, default_loss=_default_loss,
    default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls, from_df=_from_df,
    predict_json=_predict_json, prepare_model=_prepare_model, default_cbs=_default_cbs,
    predict_result=_predict_result, columns=("text", "target"), aliases=("summarization", "translation"),
    description="sequence to sequence (summarization, translation): a text column to a target column",
    peft_task_type="SEQ_2_SEQ_LM", adapter_head=False, generate=generate_seq2seq, show_results=_show_results,
    predict_options={"--max-new-tokens": "tokens to generate for each text (default 256, as the pipeline)",
                     "--num-beams": "beams of the beam search (default 4, as the pipeline)"},
    predict_inputs=_predict_inputs))
