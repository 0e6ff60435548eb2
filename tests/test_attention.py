"""Intra-Fusion through nn.MultiheadAttention: residual plan + per-head q.k / v plans (_attention.py)."""
import math
import warnings

import pytest
import torch
import torch.nn as nn

import intrafusion_viz as ifv
from intrafusion_viz.merge._attention import attention_plan, merge_heads
from helpers import assert_state_equal, keep_first_half, rel_err, state_copy

torchvision = pytest.importorskip("torchvision")
from torchvision.models import VisionTransformer  # noqa: E402


def _vit(hidden=8, mlp=16, heads=2, layers=2, seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=8, patch_size=4, num_layers=layers, num_heads=heads, hidden_dim=hidden,
                            mlp_dim=mlp, num_classes=3).double()
    with torch.no_grad():
        for p in vit.parameters():  # torchvision zeroes the head; every tensor random here
            p.copy_(torch.randn_like(p) * 0.5)
    return vit.eval()


@torch.no_grad()
def _sign_tied_heads(half: VisionTransformer) -> VisionTransformer:
    """Within each head, dim 2h+1's q/k/v rows and out_proj column are dim 2h's with flipped signs.

    So every dim of a head has the same l1 (and l2) importance, bit for bit: the stable top-k then keeps
    the first dims of each head, which in the widened model are one copy of each duplicate pair.
    """
    g = torch.Generator().manual_seed(1)
    for layer in half.encoder.layers:
        mha = layer.self_attention
        e, hd = mha.embed_dim, mha.head_dim
        w, b, wo = mha.in_proj_weight.data, mha.in_proj_bias.data, mha.out_proj.weight.data
        for part in range(3):
            for head in range(mha.num_heads):
                first = part * e + head * hd
                for d in range(1, hd):
                    sign = torch.randint(0, 2, (e,), generator=g).double() * 2 - 1
                    w[first + d] = w[first] * sign
                    b[first + d] = -b[first]
        for head in range(mha.num_heads):
            for d in range(1, hd):
                sign = torch.randint(0, 2, (e,), generator=g).double() * 2 - 1
                wo[:, head * hd + d] = wo[:, head * hd] * sign
    return half


def _widen(half: VisionTransformer) -> VisionTransformer:
    """Twice as wide: residual channel r and r + E, MLP unit j and j + M, and in every head dim d and
    d + head_dim / 2 are exact duplicates (consumers' columns halved: the same function as ``half``)."""
    e, m = half.hidden_dim, half.encoder.layers[0].mlp[0].out_features
    heads = half.encoder.layers[0].self_attention.num_heads
    hd = e // heads
    wide = _vit(2 * e, 2 * m, heads, len(half.encoder.layers))
    res = torch.arange(2 * e) % e
    hid = torch.arange(2 * m) % m
    j = torch.arange(2 * e)
    qkv = (j // (2 * hd)) * hd + (j % (2 * hd)) % hd  # wide head dim -> half head dim, same head
    with torch.no_grad():
        wide.conv_proj.weight.copy_(half.conv_proj.weight[res])
        wide.conv_proj.bias.copy_(half.conv_proj.bias[res])
        wide.class_token.copy_(half.class_token[..., res])
        wide.encoder.pos_embedding.copy_(half.encoder.pos_embedding[..., res])
        for ln_w, ln_h in [(wide.encoder.ln, half.encoder.ln)] + [
                (getattr(lw, n), getattr(lh, n)) for lw, lh in zip(wide.encoder.layers, half.encoder.layers)
                for n in ("ln_1", "ln_2")]:
            ln_w.weight.copy_(ln_h.weight[res])
            ln_w.bias.copy_(ln_h.bias[res])
        for lw, lh in zip(wide.encoder.layers, half.encoder.layers):
            aw, ah = lw.self_attention, lh.self_attention
            rows = torch.cat([qkv + p * e for p in range(3)])
            aw.in_proj_weight.copy_(ah.in_proj_weight[rows][:, res] / 2)
            aw.in_proj_bias.copy_(ah.in_proj_bias[rows])
            aw.out_proj.weight.copy_(ah.out_proj.weight[res][:, qkv] / 2)
            aw.out_proj.bias.copy_(ah.out_proj.bias[res])
            lw.mlp[0].weight.copy_(lh.mlp[0].weight[hid][:, res] / 2)
            lw.mlp[0].bias.copy_(lh.mlp[0].bias[hid])
            lw.mlp[3].weight.copy_(lh.mlp[3].weight[res][:, hid] / 2)
            lw.mlp[3].bias.copy_(lh.mlp[3].bias[res])
        wide.heads.head.weight.copy_(half.heads.head.weight[:, res] / 2)
        wide.heads.head.bias.copy_(half.heads.head.bias)
    return wide.eval()


def _duplicated_vit():
    half = _sign_tied_heads(_vit(hidden=4, mlp=8))
    wide = _widen(half)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # the widening itself is exact, except that a head of 2x the dims divides its scores by sqrt(2) more
    return half, wide, x


def test_find_groups_reports_the_residual_stream_mergeable():
    vit, x = _vit(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    groups = ifv.find_groups(vit, x)
    residual = [g for g in groups if any(isinstance(mod, nn.MultiheadAttention) for _, _, mod in g.layers)]
    assert len(residual) == 1 and residual[0].mergeable and residual[0].unmergeable_reason is None
    assert all(g.mergeable for g in groups)


@pytest.mark.parametrize("sequential", [False, True])
def test_merging_exact_duplicates_through_attention_is_exact(sequential):
    _, wide, x = _duplicated_vit()
    before = state_copy(wide)
    res = ifv.prune(wide, x, 0.5, method="intra-fusion", importance=keep_first_half, sequential=sequential)
    assert res.skipped == []
    assert_state_equal(wide, before)  # the caller's model is untouched
    rec = next(r for r in res.groups if r.attention)
    assert len(rec.attention) == 2 and rec.k == 4
    for plan in rec.attention.values():  # one copy of each duplicate pair kept in every head
        assert plan.qk_kept.tolist() == [0, 1, 4, 5] and plan.v_kept.tolist() == [0, 1, 4, 5]
        assert plan.q_scale == pytest.approx(math.sqrt(0.5))
    out, ref = res.model(x), wide(x)
    assert rel_err(out, ref) < 1e-10
    mha = res.model.encoder.layers[0].self_attention
    assert (mha.num_heads, mha.embed_dim, mha.head_dim, res.model.hidden_dim) == (2, 4, 2, 4)
    res.model.train()(x)  # train mode runs too


def test_without_the_temperature_the_duplicates_are_not_exact():
    """The q scale sqrt(k/n) is needed: undo it and the merged duplicates change the output."""
    _, wide, x = _duplicated_vit()
    res = ifv.prune(wide, x, 0.5, method="intra-fusion", importance=keep_first_half)
    with torch.no_grad():
        for layer in res.model.encoder.layers:
            mha = layer.self_attention
            e = mha.embed_dim
            mha.in_proj_weight[:e] /= math.sqrt(0.5)
            mha.in_proj_bias[:e] /= math.sqrt(0.5)
    assert rel_err(res.model(x), wide(x)) > 1e-3


def test_q_scale_none_leaves_q_as_merged():
    """OTConfig(q_scale="none"): the same merge without the temperature factor (q rows and bias divided by
    sqrt(k/n) relative to the default), everything else equal; it is then not exact on duplicates."""
    _, wide, x = _duplicated_vit()
    exact = ifv.prune(wide, x, 0.5, method="intra-fusion", importance=keep_first_half)
    free = ifv.prune(wide, x, 0.5, method="intra-fusion", importance=keep_first_half,
                     config=ifv.OTConfig(q_scale="none"))
    a, b = exact.model.state_dict(), free.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(("in_proj_weight", "in_proj_bias")):
            e = a[name].shape[0] // 3
            torch.testing.assert_close(b[name][:e] * math.sqrt(0.5), a[name][:e], rtol=1e-12, atol=0)
            assert torch.equal(b[name][e:], a[name][e:])
        else:
            assert torch.equal(a[name], b[name]), name
    assert all(p.q_scale == 1.0 for g in free.groups for p in g.attention.values())
    assert rel_err(free.model(x), wide(x)) > 1e-3
    with pytest.raises(ValueError, match="q_scale"):
        ifv.OTConfig(q_scale="sqrt")


def _heads_forward(x, weights, biases, wo, bo, heads):
    """Multi-head attention with q/k/v width (rows of weights) free of the residual width (their columns)."""
    q, k, v = (x @ w.T + b for w, b in zip(weights, biases))  # (B, T, d)
    bsz, t, d = q.shape
    split = [z.reshape(bsz, t, heads, d // heads).transpose(1, 2) for z in (q, k, v)]
    att = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(d // heads), -1) @ split[2]
    return att.transpose(1, 2).reshape(bsz, t, d) @ wo.T + bo


def test_the_inner_plans_alone_are_exact_on_duplicate_dims():
    """The q.k and v plans with the residual untouched: 8 q/k/v dims (2 heads, duplicated) -> 4."""
    _, wide, x = _duplicated_vit()
    mha = wide.encoder.layers[0].self_attention
    plan = attention_plan(mha, 4, ifv.OTConfig(), "l1")
    e = mha.embed_dim
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    weights, biases = (w[:e], w[e:2 * e], w[2 * e:]), (b[:e], b[e:2 * e], b[2 * e:])
    wo, bo = mha.out_proj.weight.detach(), mha.out_proj.bias.detach()
    tokens = torch.randn(2, 5, e, dtype=torch.float64)
    ref = _heads_forward(tokens, weights, biases, wo, bo, 2)
    assert mha.batch_first  # torchvision's EncoderBlock
    assert rel_err(ref, mha(tokens, tokens, tokens, need_weights=False)[0]) < 1e-12  # the reference is MHA's maths
    mw, mb, mwo = merge_heads(weights, biases, wo, plan)
    assert mw[0].shape == (4, e) and mwo.shape == (e, 4)
    assert rel_err(_heads_forward(tokens, mw, mb, mwo, bo, 2), ref) < 1e-10
    # each half of the plan matters: merge only q.k (v by selection) and the output changes
    sel = ifv.merge_matrices(ifv.selection_plan(e, plan.v_kept))
    wrong = merge_heads(weights, biases, wo, plan.__class__(**{**plan.__dict__, "v_out_map": sel[0],
                                                             "v_in_map": sel[1]}))
    assert rel_err(_heads_forward(tokens, *wrong[:2], wrong[2], bo, 2), ref) > 1e-3


def test_attention_plan_keeps_whole_heads_and_refuses_bad_counts():
    vit = _vit(hidden=8, heads=2)
    mha = vit.encoder.layers[0].self_attention
    plan = attention_plan(mha, 4, importance="l2")
    for kept in (plan.qk_kept, plan.v_kept):  # 2 of each head's 4 dims, inside the head
        assert ((kept < 4).sum(), (kept >= 4).sum()) == (2, 2)
    assert torch.allclose(plan.qk_plan.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert plan.qk_plan[:4, 2:].abs().sum() == 0 and plan.qk_plan[4:, :2].abs().sum() == 0  # block diagonal
    with pytest.raises(ValueError, match="multiple of 2"):
        attention_plan(mha, 3)


def test_default_pruning_is_unchanged():
    """Default pruning still prunes the MultiheadAttention as Torch-Pruning does: the same indices
    for residual and q/k/v dims, no rescaling of q."""
    vit, x = _vit(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = ifv.prune(vit, x, 0.5, method="default")
    kept = res.groups[0].kept
    assert all(not r.attention for r in res.groups)
    for lo, lp in zip(vit.encoder.layers, res.model.encoder.layers):
        e = lo.self_attention.embed_dim
        rows = torch.cat([kept + p * e for p in range(3)])
        assert torch.equal(lp.self_attention.in_proj_weight, lo.self_attention.in_proj_weight[rows][:, kept])
        assert torch.equal(lp.self_attention.out_proj.weight, lo.self_attention.out_proj.weight[kept][:, kept])


def test_inplace_failure_leaves_the_model_unchanged(monkeypatch):
    from intrafusion_viz.merge import _attention

    vit, x = _vit(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = state_copy(vit)

    def broken(*args, **kwargs):
        raise RuntimeError("surgery failed")

    monkeypatch.setattr(_attention, "merge_attention", broken)
    with pytest.raises(RuntimeError, match="surgery failed"):
        ifv.prune(vit, x, 0.5, method="intra-fusion", inplace=True)
    assert_state_equal(vit, before)
    assert vit.encoder.layers[0].self_attention.embed_dim == 8 and vit.hidden_dim == 8
    vit(x)


@pytest.mark.parametrize("method", ["intra-fusion", "fold"])
def test_vit_prunes_in_eval_and_train_mode(method):
    vit, x = _vit(hidden=12, mlp=16, heads=3), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    vit.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: no warning
        res = ifv.prune(vit, x, 0.3, method=method)
    assert res.skipped == [] and res.model.training
    mha = res.model.encoder.layers[1].self_attention
    k = res.groups[0].k
    assert k % 3 == 0 and k < 12 and (mha.embed_dim, mha.head_dim, res.model.hidden_dim) == (k, k // 3, k)
    assert res.model(x).shape == (2, 3)
    assert torch.isfinite(res.model.eval()(x)).all()


def test_transformer_encoder_layer_stack_merges_exact_duplicates():
    """nn.TransformerEncoderLayer(batch_first=True, norm_first=True): residual dims duplicated, heads sign-tied."""
    torch.manual_seed(0)
    e, h = 4, 2

    def stack(width, ff):
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(width, h, ff, dropout=0.0, batch_first=True,
                                                               norm_first=True), 2, enable_nested_tensor=False)
        return nn.Sequential(nn.Linear(3, width), enc, nn.Linear(width, 2)).double().eval()

    half, wide = stack(e, 6), stack(2 * e, 12)
    res_idx, hid = torch.arange(2 * e) % e, torch.arange(12) % 6
    j = torch.arange(2 * e)
    hd = e // h
    qkv = (j // (2 * hd)) * hd + (j % (2 * hd)) % hd
    with torch.no_grad():
        for p in half.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for layer in half[1].layers:  # sign-tied head dims (equal importance, see _sign_tied_heads)
            a = layer.self_attn
            for part in range(3):
                for head in range(h):
                    a.in_proj_weight[part * e + head * hd + 1] = a.in_proj_weight[part * e + head * hd] * \
                        torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
            for head in range(h):
                a.out_proj.weight[:, head * hd + 1] = -a.out_proj.weight[:, head * hd]
        wide[0].weight.copy_(half[0].weight[res_idx])
        wide[0].bias.copy_(half[0].bias[res_idx])
        for lw, lh in zip(wide[1].layers, half[1].layers):
            rows = torch.cat([qkv + p * e for p in range(3)])
            lw.self_attn.in_proj_weight.copy_(lh.self_attn.in_proj_weight[rows][:, res_idx] / 2)
            lw.self_attn.in_proj_bias.copy_(lh.self_attn.in_proj_bias[rows])
            lw.self_attn.out_proj.weight.copy_(lh.self_attn.out_proj.weight[res_idx][:, qkv] / 2)
            lw.self_attn.out_proj.bias.copy_(lh.self_attn.out_proj.bias[res_idx])
            lw.linear1.weight.copy_(lh.linear1.weight[hid][:, res_idx] / 2)
            lw.linear1.bias.copy_(lh.linear1.bias[hid])
            lw.linear2.weight.copy_(lh.linear2.weight[res_idx][:, hid] / 2)
            lw.linear2.bias.copy_(lh.linear2.bias[res_idx])
            for n in ("norm1", "norm2"):
                getattr(lw, n).weight.copy_(getattr(lh, n).weight[res_idx])
                getattr(lw, n).bias.copy_(getattr(lh, n).bias[res_idx])
        wide[2].weight.copy_(half[2].weight[:, res_idx] / 2)
        wide[2].bias.copy_(half[2].bias)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    groups = ifv.find_groups(wide, x)
    assert all(g.mergeable for g in groups)
    res = ifv.prune(wide, x, 0.5, importance=keep_first_half)
    assert res.skipped == [] and res.model[1].layers[0].self_attn.embed_dim == e
    assert rel_err(res.model(x), wide(x)) < 1e-10
    res.model.train()(x)


def test_unsupported_attention_stays_skipped_with_a_reason():
    class KV(nn.Module):  # kdim != embed_dim: separate projection weights
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 8)
            self.mem = nn.Linear(3, 6)
            self.att = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            h, m = self.inp(x), self.mem(x)
            return self.out(self.att(h, m, m, need_weights=False)[0] + h)

    model = KV().eval()
    x = torch.randn(2, 5, 3)
    g = next(g for g in ifv.find_groups(model, x) if any(m.name == "att" for m in g.members))
    assert not g.mergeable and "separate q/k/v projection weights" in g.unmergeable_reason
