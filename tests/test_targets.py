"""Alignment of prefixed and bare positions, padding, and the erase / retain / fluency targets."""

import pytest
import torch

from elmerase.config import ElmSettings
from elmerase.losses import elm_target_logits, eta_per_position, top_k_distribution
from elmerase.targets import (Batch, EraseExample, FluencyExample, aligned_rows, encode, erase_rows, erase_targets,
                              fluency_rows, retain_targets)
from elmerase.trainer import _student_logits


def test_aligned_rows_by_hand():
    """Text of 2 tokens, expert prefix of 3, novice prefix of 1, with BOS: bare positions 0..2 (BOS, t0, t1)
    map to expert columns 3..5 and novice columns 1..3; without BOS, 0..1 -> 3..4 and 1..2."""
    ex = EraseExample(text=[10, 11], expert=[1, 2, 3], novice=[4])
    bare, expert, novice = erase_rows([ex], [99])
    assert bare == [[99, 10, 11]] and expert == [[99, 1, 2, 3, 10, 11]] and novice == [[99, 4, 10, 11]]
    rows, cols = aligned_rows([ex], [99], "expert")
    assert cols.tolist() == [3, 4, 5] and rows.tolist() == [0, 0, 0]
    assert [expert[0][c] for c in cols.tolist()] == [3, 10, 11]  # the token each aligned position reads
    assert aligned_rows([ex], [99], "novice")[1].tolist() == [1, 2, 3]
    assert aligned_rows([ex], [], "expert")[1].tolist() == [3, 4]
    assert aligned_rows([ex], [], "novice")[1].tolist() == [1, 2]
    assert aligned_rows([ex, ex], [], None)[0].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("with_bos", [True, False])
def test_aligned_positions_read_the_same_text_tokens(tokenizer, with_bos):
    """Every aligned position of a prefixed row holds the same token as the bare row at that position
    (after the prefix's last token, which stands where BOS stands)."""
    bos = [tokenizer.bos_token_id] if with_bos else []
    text = encode(tokenizer, "Hogwarts is a school.")
    ex = EraseExample(text, encode(tokenizer, "Expert text:\n"), encode(tokenizer, "Novice:\n"))
    bare, expert, _ = erase_rows([ex], bos)
    cols = aligned_rows([ex], bos, "expert")[1].tolist()
    assert [expert[0][c] for c in cols][len(bos):] == bare[0][len(bos):]
    assert len(cols) == len(bare[0])


def reference_target(model, ex, bos, elm):
    """Unbatched, unpadded: three separate forwards, slice the text positions, apply the formula."""
    with torch.no_grad():
        def logits(row):
            return model(torch.tensor([row])).logits[0].double()
        n = len(bos) + len(ex.text)
        base = logits(bos + ex.text)
        expert = logits(bos + ex.expert + ex.text)[len(ex.expert): len(ex.expert) + n]
        novice = logits(bos + ex.novice + ex.text)[len(ex.novice): len(ex.novice) + n]
    eta = eta_per_position([n], elm.eta, elm.eta_schedule, elm.eta_start, dtype=torch.float64)
    return top_k_distribution(elm_target_logits(base, expert, novice, eta, elm.temperature), elm.top_k)


@pytest.mark.parametrize("schedule,top_k", [("constant", 5), ("linear", 0)])
def test_erase_targets_batched_equal_unbatched(tiny_model, tokenizer, schedule, top_k):
    elm = ElmSettings(eta=3.0, eta_schedule=schedule, temperature=1.2, top_k=top_k, target_dtype="float64")
    bos = [tokenizer.bos_token_id]
    examples = [EraseExample(encode(tokenizer, "Harry Potter and the wand."), encode(tokenizer, "Expert:\n"),
                             encode(tokenizer, "A novice who knows nothing:\n")),
                EraseExample(encode(tokenizer, "Quidditch."), encode(tokenizer, "An expert wrote this text:\n"),
                             encode(tokenizer, "N:\n"))]
    indices, probs = erase_targets(tiny_model, examples, bos, tokenizer.pad_token_id, elm)
    ref_i, ref_p = zip(*(reference_target(tiny_model, ex, bos, elm) for ex in examples))
    assert indices.shape[0] == sum(len(bos) + len(ex.text) for ex in examples)
    assert torch.equal(indices, torch.cat(ref_i))
    assert torch.allclose(probs.double(), torch.cat(ref_p), atol=1e-5)


def test_retain_targets_hard_and_soft(tiny_model, tokenizer):
    rows = [[1] + encode(tokenizer, "The moon and the sea."), [1] + encode(tokenizer, "Bread.")]
    idx, p = retain_targets(tiny_model, rows, tokenizer.pad_token_id, "hard_ce")
    with torch.no_grad():
        expected = torch.cat([tiny_model(torch.tensor([r])).logits[0].argmax(-1) for r in rows])
    assert torch.equal(idx[:, 0], expected) and torch.all(p == 1)
    idx_s, p_s = retain_targets(tiny_model, rows, tokenizer.pad_token_id, "kl")
    assert p_s.shape == (len(expected), len(tokenizer)) and torch.allclose(p_s.sum(-1), torch.ones(len(expected)))


def test_student_logits_drop_padding(tiny_model, tokenizer):
    """Flattened logits of a right-padded batch equal the rows' unpadded logits, concatenated."""
    rows = [[1, 40, 41, 42, 43], [1, 50, 51]]
    flat = _student_logits(tiny_model, Batch.from_rows(rows, tokenizer.pad_token_id))
    with torch.no_grad():
        expected = torch.cat([tiny_model(torch.tensor([r])).logits[0] for r in rows])
    assert flat.shape == expected.shape and torch.allclose(flat, expected, atol=1e-5)


def test_fluency_rows_label_every_token_after_text():
    """BOS 1, text [5, 6], deflection [7], continuation [8, 9]: loss on predicting 7, 8, 9 only."""
    rows, labels = fluency_rows([FluencyExample(text=[5, 6], deflection=[7], continuation=[8, 9])], [1])
    assert rows == [[1, 5, 6, 7, 8, 9]]
    assert labels == [[-100, -100, 7, 8, 9, -100]]


def test_batch_padding_and_mask():
    b = Batch.from_rows([[3, 4, 5], [6]], pad_id=0)
    assert b.input_ids.tolist() == [[3, 4, 5], [6, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.n_tokens == 4
