"""Masked language modelling (work in progress, issue 4): BERT's masking rule, vectorised per batch."""
from __future__ import annotations

import torch

from ..data import IGNORE_INDEX

__all__ = ["mask_tokens"]


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, mask_token_id: int, vocab_size: int,
                mlm_probability: float = 0.15, word_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(masked_input_ids, labels)` for a batch, with BERT's rule.

    Of the `maskable` positions (not special tokens, not padding), `mlm_probability` are selected; of those, 80%
    become `mask_token_id`, 10% a random token and 10% stay. `labels` hold the original id at selected positions
    and IGNORE_INDEX elsewhere. With `word_ids` (-1: no word), whole words are selected: all their sub-tokens or none.
    """
    shape = input_ids.shape
    if word_ids is None:
        selected = torch.bernoulli(torch.full(shape, mlm_probability), generator=generator).bool()
    else:  # one draw per (row, word), spread over the word's sub-tokens
        n_words = int(word_ids.max().clamp(min=0)) + 1
        picked = torch.bernoulli(torch.full((shape[0], n_words), mlm_probability), generator=generator).bool()
        selected = picked.gather(1, word_ids.clamp(min=0)) & (word_ids >= 0)
    selected &= maskable.bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool() & selected
    to_random = torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool() & selected & ~to_mask
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    return torch.where(to_random, random_ids, masked), labels
