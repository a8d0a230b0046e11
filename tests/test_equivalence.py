"""Every speed switch gives the plain path's losses and gradients (float tolerance): speed never changes the method.

The plain path is ``speed.*=false``: full [B, T, V] logits, separate prefixed rows, the student pass from the tokens.
The fast targets use one LM-head product per position (linearity of the head, see targets.erase_targets_from_hidden).
Models: the tiny Llama of conftest and tiny Gemma 3 / Mistral / Qwen2 built here (Gemma 3 with a 16-token sliding
window, shorter than the rows, so the cached-prefix path is checked across window boundaries).
"""

import pytest
import torch
import torch.nn.functional as F

from elmerase.config import ElmSettings, load_config
from elmerase.losses import fused_distribution_loss, fused_teacher_loss, head_chunk_rows, soft_cross_entropy
from elmerase.passes import TemplateCache, decode, layer_input, split_model
from elmerase.targets import (Batch, EraseExample, encode, erase_targets, erase_targets_from_hidden,
                              frozen_erase_hidden, frozen_hidden, retain_targets, retain_targets_from_hidden)
from elmerase.tiny import build_tiny_model
from elmerase.trainer import micro_batch_losses, prepare, train
from tests.conftest import GENERAL_TEXTS, HP_TEXTS

PLAIN = ["speed.fused_loss=false", "speed.prefix_cache=false", "speed.shared_lower_layers=false",
         "speed.retain_cache=false"]


def _small(cls_config, cls_model, tokenizer, **extra):
    config = cls_config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **extra)
    torch.manual_seed(0)
    model = cls_model(config).eval()
    model.requires_grad_(False)
    return model


def build(arch, tokenizer):
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    if arch == "llama":
        return build_tiny_model(tokenizer, seed=0)
    if arch == "gemma3":
        return _small(Gemma3TextConfig, Gemma3ForCausalLM, tokenizer, head_dim=16, sliding_window=16)
    if arch == "mistral":
        return _small(MistralConfig, MistralForCausalLM, tokenizer)
    return _small(Qwen2Config, Qwen2ForCausalLM, tokenizer)


ARCHS = ["llama", "gemma3", "mistral", "qwen2"]


def _examples(tokenizer):
    return [EraseExample(encode(tokenizer, HP_TEXTS[0]), encode(tokenizer, "An expert in the field wrote this:\n"),
                         encode(tokenizer, "Novice:\n")),
            EraseExample(encode(tokenizer, HP_TEXTS[2][:40]), encode(tokenizer, "Expert:\n"),
                         encode(tokenizer, "A novice who knows nothing about magic wrote this text:\n"))]


# ------------------------------------------------------------------ the fused, chunked LM-head loss

@pytest.mark.parametrize("kind,k,bias", [("ce", 3, False), ("kl", 11, True), ("ce", 1, False)])
def test_fused_head_loss_equals_plain_value_and_gradient(kind, k, bias):
    """N = 7 positions, H = 5, V = 11, chunks of 2 rows (4 chunks, the last one short)."""
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    weight, b = torch.randn(11, 5, dtype=torch.float64), torch.randn(11, dtype=torch.float64) if bias else None
    target = torch.randn(7, 11, dtype=torch.float64)
    values, indices = target.topk(k, dim=-1)
    probs = values.softmax(-1)
    fused = fused_distribution_loss(kind, hidden, weight, b, indices, probs, chunk=2)
    (grad_fused,) = torch.autograd.grad(fused, hidden)
    logits = F.linear(hidden, weight, b)
    plain = soft_cross_entropy(logits, indices, probs).mean()
    if kind == "kl":
        plain = plain + (probs * probs.log()).sum(-1).mean()
    (grad_plain,) = torch.autograd.grad(plain, hidden)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(grad_fused.double(), grad_plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind,bias", [("soft_ce", False), ("kl", True)])
def test_fused_teacher_loss_equals_full_distribution_loss(kind, bias):
    """The retain loss against the frozen model's whole distribution, given as teacher hidden states: N = 7, H = 5,
    V = 11, chunks of 3 rows; the plain form builds P = softmax(W t + b) over all 11 ids."""
    torch.manual_seed(1)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 5, dtype=torch.float64)
    weight, b = torch.randn(11, 5, dtype=torch.float64), torch.randn(11, dtype=torch.float64) if bias else None
    fused = fused_teacher_loss(kind, hidden, teacher, weight, b, chunk=3)
    (grad_fused,) = torch.autograd.grad(fused, hidden)
    probs = F.linear(teacher, weight, b).softmax(-1)
    indices = torch.arange(11).expand(7, 11)
    plain = soft_cross_entropy(F.linear(hidden, weight, b), indices, probs).mean()
    if kind == "kl":
        plain = plain + (probs * probs.log()).sum(-1).mean()
    (grad_plain,) = torch.autograd.grad(plain, hidden)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(grad_fused.double(), grad_plain, rtol=1e-5, atol=1e-7)
    if kind == "kl":  # KL of a distribution with itself is zero, and so is its gradient
        same = teacher.clone().requires_grad_(True)
        zero = fused_teacher_loss("kl", same, teacher, weight, b, chunk=3)
        assert zero.item() == pytest.approx(0.0, abs=1e-6)
        assert torch.autograd.grad(zero, same)[0].abs().max().item() < 1e-6


def test_head_chunk_rows():
    assert head_chunk_rows(262144) == 64 and head_chunk_rows(32000) == 524 and head_chunk_rows(10, chunk=3) == 3


# ------------------------------------------------------------------ frozen targets from hidden states

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_erase_targets_from_hidden_equal_plain(tokenizer, arch, prefix_cache):
    model = build(arch, tokenizer)
    split = split_model(model)
    assert split is not None
    elm = ElmSettings(eta=3.0, eta_schedule="linear", temperature=1.2, top_k=5, target_dtype="float64")
    bos, examples = [tokenizer.bos_token_id], _examples(tokenizer)
    plain_i, plain_p = erase_targets(model, examples, bos, tokenizer.pad_token_id, elm)
    templates = TemplateCache(split) if prefix_cache else None
    frozen = frozen_erase_hidden(split, templates, examples, bos, tokenizer.pad_token_id, capture=4)
    lengths = [len(bos) + len(ex.text) for ex in examples]
    fast_i, fast_p = erase_targets_from_hidden(split, frozen, lengths, elm, chunk=7)
    assert torch.equal(fast_i, plain_i)
    assert torch.allclose(fast_p, plain_p, atol=1e-5)
    assert frozen.lower.shape == (2, max(lengths), model.config.hidden_size)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_erase_targets_at_reference_strength(tokenizer, arch):
    """eta ramped to 1000, top-k 50: float32 logits times eta carry ~1e-3 noise in either path, so the check is the
    same top-k sets and probabilities within 1e-3 (measured: 3e-5)."""
    model = build(arch, tokenizer)
    split = split_model(model)
    elm = ElmSettings(eta=1000.0, eta_schedule="linear", temperature=1.2, top_k=50, target_dtype="float64")
    bos, examples = [tokenizer.bos_token_id], _examples(tokenizer)
    plain_i, plain_p = erase_targets(model, examples, bos, tokenizer.pad_token_id, elm)
    frozen = frozen_erase_hidden(split, TemplateCache(split), examples, bos, tokenizer.pad_token_id)
    fast_i, fast_p = erase_targets_from_hidden(split, frozen, [len(bos) + len(ex.text) for ex in examples], elm)
    dense = [torch.zeros(len(i), len(tokenizer)).scatter_(-1, i, p) for i, p in ((plain_i, plain_p), (fast_i, fast_p))]
    assert torch.equal(plain_i.sort(-1).values, fast_i.sort(-1).values)
    assert torch.allclose(dense[0], dense[1], atol=1e-3)


def test_erase_targets_without_bos(tokenizer):
    """Tokenizers without BOS (Qwen2, GPT-2): the whole prefix is cached and the query rows are the bare texts."""
    model = build("qwen2", tokenizer)
    split = split_model(model)
    elm = ElmSettings(eta=3.0, top_k=5, target_dtype="float64")
    examples = _examples(tokenizer)
    plain_i, plain_p = erase_targets(model, examples, [], tokenizer.pad_token_id, elm)
    frozen = frozen_erase_hidden(split, TemplateCache(split), examples, [], tokenizer.pad_token_id, capture=4)
    fast_i, fast_p = erase_targets_from_hidden(split, frozen, [len(ex.text) for ex in examples], elm)
    assert torch.equal(fast_i, plain_i) and torch.allclose(fast_p, plain_p, atol=1e-5)


def test_template_cache_encodes_each_prefix_once(tokenizer):
    split = split_model(build_tiny_model(tokenizer))
    cache = TemplateCache(split)
    bos, examples = [tokenizer.bos_token_id], _examples(tokenizer)
    frozen_erase_hidden(split, cache, examples, bos, tokenizer.pad_token_id)
    frozen_erase_hidden(split, cache, examples[::-1], bos, tokenizer.pad_token_id)
    assert len(cache.store) == 4  # two expert and two novice prefixes, computed once each


@pytest.mark.parametrize("kind", ["hard_ce", "kl"])
def test_retain_targets_from_hidden_equal_plain(tiny_model, tokenizer, kind):
    rows = [[1] + encode(tokenizer, GENERAL_TEXTS[0]), [1] + encode(tokenizer, GENERAL_TEXTS[3][:30])]
    plain_i, plain_p = retain_targets(tiny_model, rows, tokenizer.pad_token_id, kind)
    split = split_model(tiny_model)
    fast_i, fast_p = retain_targets_from_hidden(split, frozen_hidden(split, rows, tokenizer.pad_token_id).rows[0],
                                                kind, chunk=5)
    assert torch.equal(fast_i, plain_i) and torch.allclose(fast_p, plain_p, atol=1e-6)


# ------------------------------------------------------------------ the student pass above shared lower layers

@pytest.mark.parametrize("arch", ARCHS)
def test_student_from_shared_lower_layers_equals_full_pass(tokenizer, arch):
    """Hidden states entering layer 4, captured in one pass, then layers 4.. only: same final hidden states."""
    split = split_model(build(arch, tokenizer))
    batch = Batch.from_rows([[1] + encode(tokenizer, HP_TEXTS[1]), [1] + encode(tokenizer, "Hogwarts.")],
                            tokenizer.pad_token_id)
    with torch.no_grad(), layer_input(split, 4) as box:
        full = decode(split, batch.input_ids, batch.attention_mask)
    upper = decode(split, attention_mask=batch.attention_mask, inputs_embeds=box[0], start_layer=4)
    real = batch.flat_positions()
    assert torch.allclose(upper[real], full[real], atol=1e-5)
    assert all(type(layer).__name__ != "_Passthrough" for layer in split.layers)  # restored


# ------------------------------------------------------------------ whole micro-batches and runs

def _config(tmp_path, extra):
    cfg = load_config("tiny", [f"output.dir={tmp_path / 'out'}", f"fluency.cache_dir={tmp_path / 'cache'}",
                               "train.batch_size=3", "fluency.min_new_tokens=4", "fluency.max_new_tokens=8",
                               "elm.eta_schedule=linear", "elm.target_dtype=float64", *extra])
    cfg.concepts[0].erase = list(HP_TEXTS)
    cfg.concepts[0].retain = list(GENERAL_TEXTS[:2])  # reused from the second micro-batch on: retain cache hits
    return cfg


def _micro_batches(arch, tokenizer, cfg, n=2):
    """Losses and LoRA gradients of ``n`` micro-batches, LoRA B set to random values so that every gradient is live."""
    run = prepare(cfg, build(arch, tokenizer), tokenizer, progress=False)
    generator = torch.Generator().manual_seed(1)
    for name, param in run.model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
    torch.manual_seed(5)  # LoRA dropout draws
    values = [micro_batch_losses(run, run.concepts[0]) for _ in range(n)]
    grads = {name: p.grad.clone() for name, p in run.model.named_parameters() if p.grad is not None}
    return run, values, grads


def _assert_same(plain, fast):
    (_, values0, grads0), (_, values1, grads1) = plain, fast
    for a, b in zip(values0, values1):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=2e-6), key  # KL: a difference of ~5-nat terms
    assert grads0.keys() == grads1.keys() and len(grads0) > 0
    for name in grads0:
        scale = grads0[name].abs().max().clamp_min(1e-12)
        assert ((grads0[name] - grads1[name]).abs().max() / scale).item() < 1e-4, name


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_engine_micro_batches_equal_plain_path(tmp_path, tokenizer, arch):
    plain = _micro_batches(arch, tokenizer, _config(tmp_path, PLAIN))
    fast = _micro_batches(arch, tokenizer, _config(tmp_path, []))
    assert plain[0].split is None and fast[0].split is not None and fast[0].capture == 4
    assert len(fast[0].retain_labels) == 2  # both retain texts' labels were cached
    _assert_same(plain, fast)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("kind", ["kl", "soft_ce"])
def test_soft_retain_from_teacher_hidden_equals_plain_path(tmp_path, tokenizer, arch, kind):
    """The paper's retain loss (KL / soft CE over the whole vocabulary): fused from the frozen hidden states in the
    fast engine, from [N, V] targets in the plain path; same losses and LoRA gradients."""
    plain = _micro_batches(arch, tokenizer, _config(tmp_path, [*PLAIN, f"elm.retain_loss={kind}"]))
    fast = _micro_batches(arch, tokenizer, _config(tmp_path, [f"elm.retain_loss={kind}"]))
    assert plain[0].split is None and fast[0].split is not None
    _assert_same(plain, fast)


@pytest.mark.parametrize("switch", ["fused_loss", "prefix_cache", "shared_lower_layers", "retain_cache",
                                    "gradient_checkpointing"])
def test_each_switch_alone_equals_plain_path(tmp_path, tokenizer, switch):
    others = [s for s in PLAIN if not s.startswith(f"speed.{switch}=")]
    extra = others + ["speed.gradient_checkpointing=true"] if switch == "gradient_checkpointing" else others
    _assert_same(_micro_batches("gemma3", tokenizer, _config(tmp_path, PLAIN)),
                 _micro_batches("gemma3", tokenizer, _config(tmp_path, extra)))


def test_fast_engine_with_gradient_checkpointing_equals_plain_path(tmp_path, tokenizer):
    _assert_same(_micro_batches("llama", tokenizer, _config(tmp_path, PLAIN)),
                 _micro_batches("llama", tokenizer, _config(tmp_path, ["speed.gradient_checkpointing=true"])))


def test_three_training_steps_give_the_same_history(tmp_path, tokenizer):
    histories = []
    for extra in (PLAIN, []):
        cfg = _config(tmp_path, [*extra, "train.steps=3", "train.lr=0.01"])
        run = prepare(cfg, build_tiny_model(tokenizer, seed=0), tokenizer, progress=False)
        histories.append(train(run, progress=False))
    for plain, fast in zip(*histories):
        for key in ("erase", "retain", "fluency", "total"):
            assert plain[key] == pytest.approx(fast[key], rel=1e-4), (plain["step"], key)


def test_unsupported_architecture_uses_the_plain_path(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=8, n_head=2,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    gpt2.requires_grad_(False)
    cfg = _config(tmp_path, ["lora.target_modules=[attn]"])
    run = prepare(cfg, gpt2.eval(), tokenizer, progress=False)
    assert run.split is None
    values = micro_batch_losses(run, run.concepts[0])
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())


def test_bucket_by_length_groups_a_steps_draw(tmp_path, tokenizer):
    """batch 2 x accum 3: the step's six texts, sorted by length, in micro-batches of two."""
    cfg = _config(tmp_path, ["speed.bucket_by_length=true", "train.batch_size=2", "train.grad_accum=3"])
    run = prepare(cfg, build_tiny_model(tokenizer), tokenizer, progress=False)
    from elmerase.trainer import _draw

    state = run.concepts[0]
    batches = [_draw(run, state, "erase", 2) for _ in range(3)]
    lengths = [len(text) for batch in batches for text, _ in batch]
    assert lengths == sorted(lengths) and len({tuple(t) for b in batches for t, _ in b}) == 6


# ------------------------------------------------------------------ guided sampling of the fluency continuations

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mixed_guided_scores_equal_three_log_softmaxes(tokenizer, arch):
    from elmerase.generation import guided_scores, mixed_guided_scores

    model = build(arch, tokenizer)
    split = split_model(model)
    rows = torch.tensor([[1] + encode(tokenizer, HP_TEXTS[i])[:12] for i in range(3)])
    with torch.no_grad():
        hidden = decode(split, rows, torch.ones_like(rows))[:, -1]
        logits = model(rows).logits[:, -1]
    plain = guided_scores(logits[:1], logits[1:2], logits[2:], gamma=3.0)
    mixed = mixed_guided_scores(split, hidden[:1], hidden[1:2], hidden[2:], gamma=3.0)
    assert torch.allclose(mixed, plain.log_softmax(-1), atol=1e-5)  # the same sampling distribution


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fused_guided_sampling_draws_the_same_tokens(tokenizer, arch):
    from elmerase.generation import GenerationRequest, guided_sample

    model = build(arch, tokenizer)
    requests = [GenerationRequest(prompt=[1] + encode(tokenizer, text), expert=[1] + encode(tokenizer, "An expert"),
                                  novice=[1] + encode(tokenizer, "A novice who knows nothing"),
                                  max_new_tokens=n, seed=s)
                for text, n, s in ((HP_TEXTS[0], 12, 3), (GENERAL_TEXTS[1], 7, 4))]
    fused = guided_sample(model, requests, 3.0, tokenizer.pad_token_id, fused=True)
    plain = guided_sample(model, requests, 3.0, tokenizer.pad_token_id, fused=False)
    uncached = guided_sample(model, requests, 3.0, tokenizer.pad_token_id, use_cache=False, fused=True)
    assert fused == plain == uncached and [len(c) for c in fused] == [12, 7]
