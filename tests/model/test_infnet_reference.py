"""INFNet against a plain reference of INFNET.md's equations: explicit loops over plain Python floats.

The reference reads the model's weights (and its already-tested embedding lookups, see
test_layers.py) but none of its code: proxies, every cross-attention (per query, head and key),
the PGUs with either residual placement, LayerNorm, the heads. It computes every equation of
every block whose parameters exist, so a block that skipped something its successors need
(:func:`model.infnet.plan_block`) would make the reference fail on a missing input, and an
equation the model computes differently makes the outputs differ.
"""
from __future__ import annotations

import math

import pytest
import torch

from features.spec import demo_spec
from model.base import random_batch
from model.infnet import INFNet, INFNetConfig

SPEC = demo_spec(seq_len=3)
TINY = dict(d=4, n_heads=2, n_cat_proxies=2, n_shared_task_tokens=2, cat_proxy_hidden=6, gate_hidden=5,
            head_hidden=(3,), dropout=0.0)


# -- plain arithmetic ------------------------------------------------------------------------

def linear(x: list[float], layer: torch.nn.Linear) -> list[float]:
    w = layer.weight.tolist()
    b = layer.bias.tolist() if layer.bias is not None else [0.0] * len(w)
    return [sum(w[o][i] * x[i] for i in range(len(x))) + b[o] for o in range(len(w))]


def mlp(x: list[float], module: torch.nn.Sequential) -> list[float]:
    """Linear layers with ReLU between them (the project's MLP; dropout is off)."""
    linears = [m for m in module if isinstance(m, torch.nn.Linear)]
    for k, layer in enumerate(linears):
        x = linear(x, layer)
        if k < len(linears) - 1:
            x = [max(v, 0.0) for v in x]
    return x


def layer_norm(x: list[float], norm: torch.nn.Module) -> list[float]:
    if isinstance(norm, torch.nn.Identity):
        return list(x)
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    g, b = norm.weight.tolist(), norm.bias.tolist()
    return [(v - mean) / math.sqrt(var + norm.eps) * g[i] + b[i] for i, v in enumerate(x)]


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def add(*xs: list[float]) -> list[float]:
    return [sum(vals) for vals in zip(*xs)]


def cross_attention(queries, keys, valid, ca, heads: int) -> list[list[float]]:
    """softmax(Q W_Q (K W_K)^T / sqrt(d_k)) V W_V per head, heads concatenated; padded keys skipped,
    zero output for a query without a valid key."""
    wq, wk, wv = ca.q_proj, ca.k_proj, ca.v_proj
    keys_k = [linear(k, wk) for k in keys]
    keys_v = [linear(k, wv) for k in keys]
    out = []
    for q in queries:
        qq = linear(q, wq)
        d = len(qq)
        dh = d // heads
        row = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            scores = [(j, sum(a * b for a, b in zip(qq[sl], keys_k[j][sl])) / math.sqrt(dh))
                      for j in range(len(keys)) if valid[j]]
            if not scores:
                row += [0.0] * dh
                continue
            top = max(s for _, s in scores)
            weights = [(j, math.exp(s - top)) for j, s in scores]
            total = sum(w for _, w in weights)
            row += [sum(w / total * keys_v[j][sl][e] for j, w in weights) for e in range(dh)]
        out.append(row)
    return out


# -- the reference model ---------------------------------------------------------------------

def reference_forward(model: INFNet, batch: dict[str, torch.Tensor]) -> list[list[float]]:
    cfg = model.config
    with torch.no_grad():
        C_all = model.cat_embedding(batch["cat"]).tolist()  # c_j = E_j[v_j] (projected to d)
        S_tok, S_mask = model.seq_embedding(batch["seq"], batch["seq_gap"])
    outputs = []
    for b in range(batch["cat"].shape[0]):
        C = C_all[b]
        types, length = S_tok.shape[1], S_tok.shape[2]
        S = [S_tok[b, a, t].tolist() for a in range(types) for t in range(length)]
        valid = [bool(S_mask[b, a, t]) for a in range(types) for t in range(length)]
        T = model.task_tokens.tolist()
        # proxies of layer 0
        flat = [v for token in C for v in token]
        Cp = None
        if model.cat_proxy is not None:
            z = mlp(flat, model.cat_proxy)
            Cp = [z[i * cfg.d:(i + 1) * cfg.d] for i in range(cfg.n_cat_proxies)]
        Sp = None
        if model.seq_proxy is not None:
            Sp = []
            for a in range(types):
                row = [0.0] * cfg.d
                for t in range(length):
                    if valid[a * length + t]:
                        row = add(row, linear(S[a * length + t], model.seq_proxy))
                Sp.append(row)
        Tp = model.shared_task_tokens.tolist() if model.shared_task_tokens is not None else None
        all_valid = lambda xs: [True] * len(xs)  # noqa: E731

        for block in model.blocks:
            ca, norms, gates = block.ca, block.norms, block.gates

            def flow(query, pairs):
                """Σ of CA(query, K, K) over the (attention name, keys, mask) that the block has."""
                total = [[0.0] * cfg.d for _ in query]
                for name, keys, mask in pairs:
                    if name in ca:
                        total = [add(t, o) for t, o in zip(total, cross_attention(query, keys, mask, ca[name], cfg.n_heads))]
                return total

            def update(stream, x, f):
                return [layer_norm(add(xi, fi) if cfg.residual else fi, norms[stream]) for xi, fi in zip(x, f)]

            def gate(stream, proxy):
                return [sigmoid(v) for v in mlp([v for token in proxy for v in token], gates[stream])]

            def pgu(stream, x, proxy):  # X * sigmoid(MLP(Flatten(X~))), one gate broadcast over tokens
                g = gate(stream, proxy)
                gated = [[xi * gi for xi, gi in zip(token, g)] for token in x]
                if cfg.pgu_residual == "update":
                    return [layer_norm(token, norms[stream]) for token in gated]
                return update(stream, x, gated)

            new = {}
            if "Cp" in norms:  # C~' = CA(C~, S, S) + CA(C~, T, T)
                new["Cp"] = update("Cp", Cp, flow(Cp, [("cp_s", S, valid), ("cp_t", T, all_valid(T))]))
            if "Sp" in norms:  # S~' = CA(S~, C, C) + CA(S~, T, T)
                new["Sp"] = update("Sp", Sp, flow(Sp, [("sp_c", C, all_valid(C)), ("sp_t", T, all_valid(T))]))
            if "Tp" in norms:  # T~' = CA(T~, C, C) + CA(T~, S, S)
                new["Tp"] = update("Tp", Tp, flow(Tp, [("tp_c", C, all_valid(C)), ("tp_s", S, valid)]))
            proxies = {"Cp": Cp, "Sp": Sp, "Tp": Tp}
            gate_from = proxies if cfg.gate_source == "layer" else {**proxies, **new}
            new_C = pgu("C", C, gate_from["Cp"]) if "C" in gates else C  # C' = PGU(C, C~)
            new_S = S
            if "S" in gates:  # S' = PGU(S, S~), padding stays zero
                new_S = [token if ok else [0.0] * cfg.d for token, ok in zip(pgu("S", S, gate_from["Sp"]), valid)]
            if "T" in gates or "T_hat" in norms:
                attended = flow(T, [("t_c", C, all_valid(C)), ("t_s", S, valid)])  # CA(T, C, C) + CA(T, S, S)
                if "T" not in gates:  # no PGU
                    new_T = update("T_hat", T, attended)
                elif cfg.pgu_residual == "update":  # T' = LN(T + g * (CA(T, C) + CA(T, S)))
                    g = gate("T", gate_from["Tp"])
                    new_T = update("T", T, [[a * gi for a, gi in zip(row, g)] for row in attended])
                else:  # T^ = LN(T + CA ...), T' = PGU(T^, T~) with the residual around the gate
                    t_hat = update("T_hat", T, attended)
                    new_T = pgu("T", t_hat, gate_from["Tp"])
            else:
                new_T = None
            C, S, T = new_C, new_S, new_T
            Cp, Sp, Tp = new.get("Cp"), new.get("Sp"), new.get("Tp")
        # y_i = MLP_i(T_i^(N))
        outputs.append([mlp(T[i], tower)[0] for i, tower in enumerate(model.heads.towers)])
    return outputs


CHOICES = [
    {"gate_source": g, "pgu_residual": r, "n_blocks": n}
    for g in ("layer", "updated") for r in ("gate", "update") for n in (1, 2, 3)
] + [{"residual": False, "layernorm": False}, {"use_pgu": False}, {"seq_proxy_pooling": "sum", "gate_source": "updated",
                                                                   "use_cross_attention": True, "n_blocks": 2}]


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_model_equals_the_reference_of_the_spec_equations(choice):
    torch.manual_seed(3)
    model = INFNet(SPEC, INFNetConfig(**{**TINY, **choice})).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so that a swapped norm shows
        for name, p in model.named_parameters():
            if "norms" in name:
                p.add_(torch.randn_like(p) * 0.3)
    batch = random_batch(SPEC, 3, seed=11)
    batch["seq"][1] = 0  # a user without any history: every sequence key masked
    batch["seq_gap"][1] = 0.0
    with torch.no_grad():
        got = model(batch)
    want = torch.tensor(reference_forward(model, batch), dtype=got.dtype)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_the_reference_sees_a_change_of_any_single_equation():
    """The comparison can fail: perturb one attention of the first block and the outputs move."""
    torch.manual_seed(3)
    model = INFNet(SPEC, INFNetConfig(**{**TINY, "gate_source": "updated", "n_blocks": 2, "task_token_std": 1.0})).eval()
    batch = random_batch(SPEC, 2, seed=12)
    want = torch.tensor(reference_forward(model, batch))
    for name in ("cp_s", "cp_t", "sp_c", "sp_t", "tp_c", "tp_s", "t_c", "t_s"):
        weight = model.blocks[0].ca[name].v_proj.weight
        kept = weight.detach().clone()
        with torch.no_grad():
            before = model(batch)
            weight.add_(torch.randn_like(weight))
            after = model(batch)
            weight.copy_(kept)
        assert (after - before).abs().max() > 1e-4, f"{name} does not reach the output"
    torch.testing.assert_close(model(batch).detach(), want.to(torch.float32), atol=2e-5, rtol=1e-4)
