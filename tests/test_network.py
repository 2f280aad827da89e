"""The network: exact parameter count, forward pass against numpy, and the hand-written recurrence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from folkrnn.model.network import FolkRNN, ModelConfig, recurrence
from folkrnn.schemas.vocab import VOCAB_SIZE
from tests.conftest import small_model


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def step_weights(model: FolkRNN) -> dict:
    """Detached weights for a hand-written step function, torch gate order (i, f, g, o):
    ``layers`` is a list of dicts with ``w_x`` (4H x n_in), ``w_h`` (4H x H), ``b`` (4H), ``h0`` (H),
    ``c0`` (H); ``out_w`` (V x H) and ``out_b`` (V) are the dense layer. For layer 1,
    ``w_x[:, token]`` is the input contribution of a token."""
    return {
        "layers": [
            {"w_x": layer.weight_ih.detach(), "w_h": layer.weight_hh.detach(), "b": layer.bias.detach(),
             "h0": layer.h0.detach(), "c0": layer.c0.detach()}
            for layer in model.layers
        ],
        "out_w": model.out.weight.detach(),
        "out_b": model.out.bias.detach(),
    }


def numpy_forward(weights: dict, ids: np.ndarray) -> np.ndarray:
    """Softmax probabilities (B, T, V) from the article's equations, step by step, float64, with a
    dense one-hot input (fine in a reference). Weights in torch layout, gate order i, f, g, o."""
    batch, steps = ids.shape
    layers = [{k: v.double().numpy() for k, v in layer.items()} for layer in weights["layers"]]
    out_w, out_b = weights["out_w"].double().numpy(), weights["out_b"].double().numpy()
    h = [np.tile(layer["h0"], (batch, 1)) for layer in layers]
    c = [np.tile(layer["c0"], (batch, 1)) for layer in layers]
    probs = np.zeros((batch, steps, out_b.shape[0]))
    for t in range(steps):
        x = np.eye(layers[0]["w_x"].shape[1])[ids[:, t]]
        for k, layer in enumerate(layers):
            n = layer["w_h"].shape[1]
            w_x = {g: layer["w_x"][j * n : (j + 1) * n].T for j, g in enumerate("ifco")}
            w_h = {g: layer["w_h"][j * n : (j + 1) * n].T for j, g in enumerate("ifco")}
            b = {g: layer["b"][j * n : (j + 1) * n] for j, g in enumerate("ifco")}
            i = sigmoid(x @ w_x["i"] + h[k] @ w_h["i"] + b["i"])
            f = sigmoid(x @ w_x["f"] + h[k] @ w_h["f"] + b["f"])
            o = sigmoid(x @ w_x["o"] + h[k] @ w_h["o"] + b["o"])
            c[k] = f * c[k] + i * np.tanh(x @ w_x["c"] + h[k] @ w_h["c"] + b["c"])
            h[k] = o * np.tanh(c[k])
            x = h[k]
        logits = x @ out_w.T + out_b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[:, t] = e / e.sum(axis=1, keepdims=True)
    return probs


def test_parameter_count_is_the_articles():
    model = FolkRNN()
    assert model.num_parameters() == 5_599_881
    assert model.num_parameters(exclude_initial_states=False) == 5_599_881 + 3 * 2 * 512
    # One bias per gate: torch's second bias is a zero buffer, not a parameter.
    assert all("zero_bias" not in name for name, _ in model.named_parameters())
    assert ModelConfig() == ModelConfig(vocab_size=137, n_layers=3, n_units=512, dropout=0.5)


def test_forward_matches_numpy_step_by_step():
    model = small_model(layers=3, units=8).eval()
    ids = np.random.default_rng(1).integers(0, VOCAB_SIZE, size=(3, 9))
    logits, _ = model(torch.from_numpy(ids))
    ours = torch.softmax(logits.double(), -1).detach().numpy()
    expected = numpy_forward(step_weights(model), ids)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_state_carries_a_sequence_across_calls():
    model = small_model().eval()
    ids = torch.randint(0, VOCAB_SIZE, (2, 10))
    whole, _ = model(ids)
    first, state = model(ids[:, :4])
    second, _ = model(ids[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-6, rtol=0)


def test_fused_and_per_step_paths_agree_in_values_and_gradients():
    model = small_model(layers=3, units=12, dropout=0.0).double().train()
    ids = torch.randint(0, VOCAB_SIZE, (4, 7))

    def run(clip: float):
        model.zero_grad()
        logits, _ = model(ids, grad_clip=clip)
        (logits.sin().sum()).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    fused_out, fused_grads = run(0.0)
    step_out, step_grads = run(1e9)  # per-step recurrence everywhere, clipping never active
    torch.testing.assert_close(fused_out, step_out)
    for a, b in zip(fused_grads, step_grads):
        torch.testing.assert_close(a, b)


def test_recurrence_gradients_pass_gradcheck():
    torch.manual_seed(0)
    steps, batch, n = 4, 3, 5
    args = (torch.randn(steps, batch, 4 * n, dtype=torch.double, requires_grad=True),
            torch.randn(4 * n, n, dtype=torch.double, requires_grad=True),
            torch.randn(batch, n, dtype=torch.double, requires_grad=True),
            torch.randn(batch, n, dtype=torch.double, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *a: recurrence(*a), args)


def test_elementwise_clipping_is_lasagnes_grad_clip_on_gate_preactivations():
    """Reference: an autograd loop clamping the gradient of each step's gate pre-activations,
    which is what theano.gradient.grad_clip(gates, -5, 5) did in Lasagne's LSTM step."""
    torch.manual_seed(0)
    steps, batch, n, clip = 6, 2, 4, 0.05
    gx = torch.randn(steps, batch, 4 * n, dtype=torch.double, requires_grad=True)
    w = torch.randn(4 * n, n, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(batch, n, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(batch, n, dtype=torch.double, requires_grad=True)

    hs, _, _ = recurrence(gx, w, h0, c0, clip)
    (hs * 10).sum().backward()
    ours = [t.grad.clone() for t in (gx, w, h0, c0)]
    for t in (gx, w, h0, c0):
        t.grad = None

    h, c, outs = h0, c0, []
    for t in range(steps):
        pre = gx[t] + h @ w.t()
        pre.register_hook(lambda g: g.clamp(-clip, clip))
        i, f, g, o = pre.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    (torch.stack(outs) * 10).sum().backward()
    reference = [t.grad for t in (gx, w, h0, c0)]
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    assert (ours[0].abs().max() <= clip + 1e-12) and ours[0].abs().max() == pytest.approx(clip)


def test_layer_one_input_is_a_row_lookup():
    """Only the columns of tokens that occur get a gradient: the one-hot product is a lookup."""
    model = small_model(dropout=0.0).train()
    ids = torch.tensor([[3, 5, 5, 7]])
    logits, _ = model(ids)
    logits.sum().backward()
    touched = model.layers[0].weight_ih.grad.abs().sum(0).nonzero().flatten().tolist()
    assert touched == [3, 5, 7]


def test_dropout_only_in_training():
    model = small_model(dropout=0.5)
    ids = torch.randint(0, VOCAB_SIZE, (2, 5))
    model.eval()
    a, _ = model(ids)
    b, _ = model(ids)
    torch.testing.assert_close(a, b)
    model.train()
    c, _ = model(ids)
    assert not torch.allclose(a, c)


def test_step_weights_shapes_and_order():
    model = small_model(layers=2, units=8)
    w = step_weights(model)
    assert [tuple(layer["w_x"].shape) for layer in w["layers"]] == [(32, VOCAB_SIZE), (32, 8)]
    assert all(tuple(layer["w_h"].shape) == (32, 8) and tuple(layer["b"].shape) == (32,) for layer in w["layers"])
    assert tuple(w["out_w"].shape) == (VOCAB_SIZE, 8) and tuple(w["out_b"].shape) == (VOCAB_SIZE,)
    assert not any(t.requires_grad for layer in w["layers"] for t in layer.values())


def test_original_initialisation():
    model = FolkRNN(ModelConfig(n_layers=1, n_units=8))
    layer = model.layers[0]
    assert torch.all(layer.bias[8:16] == 5.0) and torch.all(layer.bias[:8] == 0) and torch.all(layer.c0 == 0)
    block = layer.weight_hh[:8]
    torch.testing.assert_close(block @ block.t(), torch.eye(8), atol=1e-5, rtol=0)  # orthogonal per gate
