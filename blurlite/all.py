"""Everything public: `from blurlite.all import *` (after `from fastai.text.all import *`)."""
from .adapters import add_adapters, default_lora_config, has_adapters, merged_model
from .checks import is_missing
from .data import (IGNORE_INDEX, HFSortedDL, HFTextBlock, HFTextInput, HFTextPair, HFTokenize, TensorTokenLabels,
                   find_hf_transform, model_max_length, split_rows)
from .data import DOC_IDS, LONG_TEXTS, WINDOW_AGGREGATIONS, HFWindowedDL, aggregate_windows
from .losses import TokenCrossEntropyLossFlat
from .hf_objects import HFObjects, get_hf_objects
from .learner import HFLearner, HFModelCallback, HFModelWrapper, hf_learner, hf_splitter
from .loading import load_pretrained_learner
from .tasks import (HFTask, get_task, logits_as_pred, register_task, registered_tasks, set_model_labels,
                    targets_as_labels, task_for)
from .versions import IncompatibleArtifactError, stack_versions
from .tasks.sequence_classification import (HFTextDataLoaders, OneHotColumns, TextTargets, is_multi_label,
                                            register_text_targets, target_transforms)
from .tasks.regression import FloatColumns, PearsonR, is_regression, pearsonr

__all__ = ["IGNORE_INDEX", "HFSortedDL", "HFTextBlock", "HFTextInput", "HFTextPair", "HFTokenize",
           "find_hf_transform", "model_max_length", "split_rows", "TensorTokenLabels", "TokenCrossEntropyLossFlat",
           "HFObjects", "get_hf_objects", "HFLearner", "HFModelCallback", "HFModelWrapper", "hf_learner",
           "hf_splitter", "HFTask", "get_task", "logits_as_pred", "register_task", "registered_tasks",
           "set_model_labels", "targets_as_labels", "task_for", "HFTextDataLoaders", "OneHotColumns", "TextTargets",
           "is_multi_label", "register_text_targets", "target_transforms", "FloatColumns", "PearsonR", "is_regression", "pearsonr",
           "is_missing", "load_pretrained_learner", "IncompatibleArtifactError", "stack_versions",
           "add_adapters", "default_lora_config", "has_adapters", "merged_model"]
__all__ += ["DOC_IDS", "LONG_TEXTS", "WINDOW_AGGREGATIONS", "HFWindowedDL", "aggregate_windows"]
from .tasks.token_classification import (AlignWordLabels, HFTokenClassBlock, HFTokenClassDataLoaders, HFTokenClassInput, HFTokenizeWords,
                                         HFWords, SeqevalMetric, TokenCategorize, TokenCategoryBlock, align_word_labels,
                                         entity_f1, entity_precision, entity_recall, read_conll, token_accuracy,
                                         word_ids_from_offsets, word_labels_from_tokens)

__all__ += ["AlignWordLabels", "HFTokenClassBlock", "HFTokenClassDataLoaders", "HFTokenClassInput", "HFTokenizeWords", "HFWords",
            "SeqevalMetric", "TokenCategorize", "TokenCategoryBlock", "align_word_labels", "entity_f1", "entity_precision", "entity_recall",
            "read_conll", "token_accuracy", "word_ids_from_offsets", "word_labels_from_tokens"]
from .tasks.masked_lm import (HFMaskedTokens, HFMLMBlock, HFMLMDataLoaders, HFMLMInput, HFTokenizeMLM, MaskedLMLogitsCallback,
                              MaskedLMLossFlat,
                              MaskedLMMetric, MaskTokens, MaskTokensFixed, group_texts, mask_tokens, masked_accuracy,
                              mlm_perplexity)

__all__ += ["HFMaskedTokens", "HFMLMBlock", "HFMLMDataLoaders", "HFMLMInput", "HFTokenizeMLM", "MaskedLMLogitsCallback", "MaskedLMLossFlat",
            "MaskedLMMetric", "MaskTokens", "MaskTokensFixed", "group_texts", "mask_tokens", "masked_accuracy",
            "mlm_perplexity"]
from .optimizer import HFAdamW
from .datasets import example_data
from .mixed_precision import (BF16EmulationWarning, CPUMixedPrecision, QuantizedInference, cpu_bf16_support,
                              hf_to_bf16, hf_to_fp32, quantize_learner)

__all__ += ["HFAdamW", "example_data", "BF16EmulationWarning", "CPUMixedPrecision", "QuantizedInference", "cpu_bf16_support", "hf_to_bf16",
            "hf_to_fp32", "quantize_learner"]

# the model classes get_hf_objects takes, so that `from blurlite.all import *` is enough in a notebook
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification  # noqa: E402

__all__ += ["AutoModelForMaskedLM", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"]
from .tasks.question_answering import (HFQABlock, HFQADataLoaders, HFQAInput, HFQATokenize, QALossFlat, QAMetric,
                                       QAnswers, QAnswersBlock, QAnswerText, QAReferences, QAText, QAWindowLabels,
                                       TensorQAPositions, TensorQAPrediction, TensorQASpans, TensorQATargets,
                                       qa_windows, squad_exact_match, squad_f1)
from .tasks.squad import (check_qa_frame, normalize_answer, parse_answers, search_answers, squad_answer_scores,
                          squad_to_df, squad_to_question_generation_df)
from transformers import AutoModelForQuestionAnswering  # noqa: E402

__all__ += ["HFQABlock", "HFQADataLoaders", "HFQAInput", "HFQATokenize", "QALossFlat", "QAMetric", "QAnswers",
            "QAnswersBlock", "QAnswerText", "QAReferences", "QAText", "QAWindowLabels", "TensorQAPositions",
            "TensorQAPrediction", "TensorQASpans", "TensorQATargets", "normalize_answer", "qa_windows",
            "search_answers", "squad_answer_scores", "squad_exact_match", "squad_f1", "squad_to_df", "squad_to_question_generation_df", "check_qa_frame",
            "parse_answers",
            "AutoModelForQuestionAnswering"]
from .tasks.causal_lm import (CausalLMLossFlat, CausalLMMetric, CausalLMTargets, HFCausalLMBlock,
                              HFCausalLMDataLoaders, HFCausalLMInput, HFTokenizeCLM, causal_perplexity,
                              generate_text, next_token_accuracy, pack_texts, read_texts, set_pad_token,
                              lm_token_ids, train_bpe_tokenizer)
from transformers import AutoModelForCausalLM  # noqa: E402

__all__ += ["CausalLMLossFlat", "CausalLMMetric", "CausalLMTargets", "HFCausalLMBlock", "HFCausalLMDataLoaders",
            "HFCausalLMInput", "HFTokenizeCLM", "causal_perplexity", "generate_text", "next_token_accuracy",
            "pack_texts", "read_texts", "set_pad_token", "lm_token_ids", "train_bpe_tokenizer", "AutoModelForCausalLM"]
from .tasks.seq2seq import (GenerationMetric, HFSeq2SeqBlock, HFSeq2SeqDataLoaders, HFSeq2SeqDL,  # noqa: E402
                            HFSeq2SeqInput, HFTokenizeSeq2Seq, HFTokenizeTargets, Seq2SeqDecoderInputs,
                            Seq2SeqLossFlat, Seq2SeqTargetIds, bleu, generate_seq2seq, hf_encoder_decoder,
                            pipeline_generation_config, rouge, rouge1, rouge2, seq2seq_perplexity)
from transformers import AutoModelForSeq2SeqLM  # noqa: E402

__all__ += ["GenerationMetric", "HFSeq2SeqBlock", "HFSeq2SeqDataLoaders", "HFSeq2SeqDL", "HFSeq2SeqInput",
            "HFTokenizeSeq2Seq", "HFTokenizeTargets", "Seq2SeqDecoderInputs", "Seq2SeqLossFlat", "Seq2SeqTargetIds",
            "bleu", "generate_seq2seq", "hf_encoder_decoder", "pipeline_generation_config", "rouge", "rouge1",
            "rouge2", "seq2seq_perplexity", "AutoModelForSeq2SeqLM"]
