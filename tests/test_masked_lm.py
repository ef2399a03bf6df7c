"""Masking statistics and invariants (the masked-LM block itself is issue 4's remaining work)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blurlite.data import IGNORE_INDEX
from blurlite.tasks.masked_lm import mask_tokens

MASK, VOCAB_SIZE = 4, 1000


def random_batch(generator, rows=64, length=128):
    ids = torch.randint(5, VOCAB_SIZE, (rows, length), generator=generator)
    lengths = torch.randint(8, length + 1, (rows,), generator=generator)
    maskable = torch.arange(length)[None] < lengths[:, None] - 1
    maskable[:, 0] = False  # [CLS]; the last real position plays [SEP], the rest padding
    return ids, maskable


def test_selected_fraction_and_80_10_10_split_over_many_batches():
    g = torch.Generator().manual_seed(0)
    selected = candidates = masked = randomised = kept = 0
    for _ in range(50):
        ids, maskable = random_batch(g)
        out, labels = mask_tokens(ids, maskable, MASK, VOCAB_SIZE, generator=g)
        chosen = labels != IGNORE_INDEX
        selected, candidates = selected + int(chosen.sum()), candidates + int(maskable.sum())
        masked += int((out[chosen] == MASK).sum())
        same = out[chosen] == ids[chosen]
        kept += int(same.sum())
        randomised += int((~same & (out[chosen] != MASK)).sum())
    assert abs(selected / candidates - 0.15) < 0.01
    # a random replacement can draw the original token (1 in 1000): within the tolerance
    assert abs(masked / selected - 0.8) < 0.02 and abs(randomised / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02


def test_mlm_probability_is_configurable():
    g = torch.Generator().manual_seed(1)
    ids, maskable = random_batch(g, rows=256)
    _, labels = mask_tokens(ids, maskable, MASK, VOCAB_SIZE, mlm_probability=0.4, generator=g)
    assert abs(int((labels != IGNORE_INDEX).sum()) / int(maskable.sum()) - 0.4) < 0.01


def test_new_masks_each_call():
    g = torch.Generator().manual_seed(2)
    ids, maskable = random_batch(g)
    assert not torch.equal(mask_tokens(ids, maskable, MASK, VOCAB_SIZE, generator=g)[1],
                           mask_tokens(ids, maskable, MASK, VOCAB_SIZE, generator=g)[1])


@settings(max_examples=100, deadline=None)
@given(word_lengths=st.lists(st.integers(1, 4), min_size=1, max_size=30), n_pad=st.integers(0, 10),
       seed=st.integers(0, 2**31), whole_word=st.booleans())
def test_special_tokens_and_padding_are_never_selected_and_words_never_split(word_lengths, n_pad, seed,
                                                                             whole_word):
    word_ids = [-1] + [w for w, n in enumerate(word_lengths) for _ in range(n)] + [-1] + [-1] * n_pad
    word_ids = torch.tensor([word_ids] * 8)
    maskable = word_ids >= 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB_SIZE, word_ids.shape, generator=g)
    out, labels = mask_tokens(ids, maskable, MASK, VOCAB_SIZE, mlm_probability=0.5,
                              word_ids=word_ids if whole_word else None, generator=g)
    chosen = labels != IGNORE_INDEX
    assert not chosen[~maskable].any() and torch.equal(out[~maskable], ids[~maskable])
    assert torch.equal(labels[chosen], ids[chosen])
    if whole_word:
        for row in range(8):
            for w in range(len(word_lengths)):
                picks = chosen[row][word_ids[row] == w]
                assert picks.all() or not picks.any()
