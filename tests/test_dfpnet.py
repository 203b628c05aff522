"""DFPNet: the authors' state_dict, their wiring, their output order, any input size."""

from __future__ import annotations

import copy

import pytest
import torch

from networks.dfpnet import DFPNet
from tests.reference_dfpnet import reference_forward
from utils.labels import DOG


@pytest.fixture(scope="module")
def model() -> DFPNet:
    torch.manual_seed(0)
    return DFPNet(8)


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every ABN non-trivial statistics and weights, some negative or near zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1 and name.endswith(".weight"):
                w = torch.rand(t.shape, generator=g) * 1.5 + 0.25
                sign = torch.where(torch.rand(t.shape, generator=g) < 0.3, -1.0, 1.0)
                w = w * sign
                w[::7] = 1e-7  # near-zero: |w| + eps differs from w most here
                t.copy_(w)
            elif t.dim() == 1 and name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def test_state_dict_matches_the_authors(model, reference_keys):
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(reference_keys)  # same names, same order
    assert ours == reference_keys
    assert len(ours) == 701
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(61.18e6, rel=1e-3)


def test_class_count_changes_only_the_classifiers(reference_keys):
    ours = {k: tuple(v.shape) for k, v in DFPNet(20).state_dict().items()}
    changed = {k for k in ours if ours[k] != reference_keys[k]}
    assert changed == {"aux_pred.4.weight", "aux_pred.4.bias", "outc.2.weight", "outc.2.bias"}
    assert ours["outc.2.weight"] == (20, 16, 1, 1)


@pytest.mark.parametrize("size", [(61, 47), (33, 80), (64, 64)])
def test_five_outputs_at_input_size_for_odd_sizes(model, size):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert isinstance(out, (list, tuple)) and len(out) == 5
    for o in out:
        assert o.shape == (2, 8, *size)
        assert torch.isfinite(o).all()


def test_matches_the_authors_forward_float64(model):
    _randomise_norms(model)
    model.eval().double()
    try:
        x = torch.randn(1, 3, 53, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours = model(x)
            ref = reference_forward(model.state_dict(), x)
        for a, b in zip(ours, ref):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())
    finally:
        model.float()


def test_matches_the_authors_forward_float32(model):
    _randomise_norms(model, seed=3)
    model.eval()
    x = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward({k: v.double() for k, v in model.state_dict().items()}, x.double())
    for a, b in zip(ours, ref):
        rel = (a.double() - b).norm() / b.norm()
        assert rel < 1e-5, f"relative error {rel:.2e}"


def test_reference_catches_a_wiring_change(model):
    """The parity test above can fail: swapping two HD outputs in the fusion changes the result."""
    model.eval()
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    sd = dict(model.state_dict())
    w = sd["double3x3.0.weight"].clone()
    sd["double3x3.0.weight"] = torch.cat([w[:, 32:64], w[:, :32], w[:, 64:]], 1)  # HD2 <-> HD3
    with torch.no_grad():
        ours = model(x)[-1]
        wrong = reference_forward(sd, x)[-1]
    assert (ours - wrong).abs().max() > 1e-4


def test_eval_mode_is_deterministic(model):
    model.eval()
    x = torch.randn(1, 3, 45, 38)
    with torch.no_grad():
        a, b = model(x), model(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_training_step_reaches_every_used_parameter():
    torch.manual_seed(0)
    net = DFPNet(8).train()
    out = net(torch.randn(2, 3, 40, 36))
    sum(o.float().mean() for o in out).backward()
    no_grad = {n for n, p in net.named_parameters() if p.grad is None}
    # layer5_pred3x3 exists in the authors' checkpoints but their forward never uses it.
    assert no_grad == {n for n, _ in net.named_parameters() if n.startswith("layer5_pred3x3.")}


def test_bad_input_shapes_are_explained(model):
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="H, W >= 2"):
        model(torch.randn(1, 3, 1, 32))


def _live_bytes() -> int:
    """Bytes glibc's malloc has handed out and not got back (heap + mmapped chunks)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _forward_memory_and_grads(net: DFPNet, x: torch.Tensor):
    """Live bytes that the training forward leaves for backward, outputs and gradients."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout draws in both runs
    before = _live_bytes()
    out = net(x)
    held = _live_bytes() - before
    sum((o * o).mean() for o in out).backward()
    return held, out, [p.grad for p in net.parameters() if p.grad is not None]


def test_backbone_relus_recomputed_in_backward_same_gradients_less_memory(monkeypatch):
    import copy

    import networks.backbone as backbone

    try:
        _live_bytes()
    except (AttributeError, OSError):
        pytest.skip("needs glibc's mallinfo2 to count live bytes")
    torch.manual_seed(0)
    net = DFPNet(8).double().train()
    _randomise_norms(net, seed=5)
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    relu_bytes = []
    real = backbone.relu_into

    def counting(y, norm, consumer):
        relu_bytes.append(y.numel() * y.element_size())
        return real(y, norm, consumer)

    monkeypatch.setattr(backbone, "relu_into", counting)
    _forward_memory_and_grads(copy.deepcopy(net), x)  # warm-up: first-call allocations
    relu_bytes.clear()
    held_on, out_on, grads_on = _forward_memory_and_grads(net, x)
    monkeypatch.setattr(backbone, "RECOMPUTE_RELU", False)
    held_off, out_off, grads_off = _forward_memory_and_grads(twin, x)
    for a, b in zip(out_on + grads_on, out_off + grads_off):
        assert torch.equal(a, b)
    assert len(grads_on) == len(grads_off) > 300
    # relu(y) of the stem's first two norms and of two norms per bottleneck is no longer kept.
    assert len(relu_bytes) == 2 * (2 + 2 * (3 + 4 + 23 + 3))  # two runs of: 2 in the stem, 2 per bottleneck
    assert held_off - held_on > 0.8 * sum(relu_bytes) / 2, (held_on, held_off, sum(relu_bytes) / 2)


def _step(model, x, y, amp: bool):
    """Forward (dropout seeded alike), the five-output loss, backward; returns the loss and the bytes
    autograd saved for backward outside checkpointed blocks (inside them, checkpointing saves)."""
    from torch.autograd.graph import saved_tensors_hooks

    from training.loss import parsing_loss

    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        outputs = model(x.clone())
    loss = parsing_loss(outputs, y)
    loss.backward()
    return loss.item(), saved[0]


@pytest.mark.parametrize(
    "layers,amp", [(("layer3",), False), (("layer1", "layer2", "layer3", "layer4"), True)]
)
def test_activation_checkpointing_same_loss_gradients_and_statistics_less_memory(layers, amp):
    """Recomputing the chosen layers' bottlenecks in backward changes nothing but memory: the loss, every
    gradient and every running statistic after the step are the same bits (float32; bf16 autocast with
    channels-last), and autograd keeps fewer bytes for backward."""
    torch.manual_seed(0)
    plain = DFPNet(DOG.num_classes).to(memory_format=torch.channels_last).train()
    recomputing = copy.deepcopy(plain)
    recomputing.set_activation_checkpointing(layers)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, DOG.num_classes, (2, 64, 64))
    loss_a, saved_a = _step(plain, x, y, amp)
    loss_b, saved_b = _step(recomputing, x, y, amp)
    assert loss_a == loss_b
    grads_a = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    grads_b = {n: p.grad for n, p in recomputing.named_parameters() if p.grad is not None}
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 400
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    state_a, state_b = plain.state_dict(), recomputing.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # running stats updated once
    assert saved_b < 0.85 * saved_a, (saved_a, saved_b)
    with pytest.raises(ValueError, match="cannot checkpoint layer5: choose from layer1, .*, heads"):
        recomputing.set_activation_checkpointing(("layer5",))


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_stem_max_pool_keeps_no_indices_and_gives_the_same_gradients(dtype, channels_last):
    """The stem's max pool keeps its input instead of int64 indices; outputs and gradients are those of
    nn.MaxPool2d, ties included (a ReLU's output is mostly ties at 0)."""
    from torch.autograd.graph import saved_tensors_hooks

    from networks.backbone import StemMaxPool

    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 8, 17, 20)).to(dtype)
    x[:, :, :4] = 0.5  # ties among positive values too
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 8, 9, 10).to(dtype)
    results = []
    for pool in (torch.nn.MaxPool2d(3, 2, 1), StemMaxPool()):
        inp = x.clone().requires_grad_()
        kept: list[torch.dtype] = []
        with saved_tensors_hooks(lambda t: kept.append(t.dtype) or t, lambda t: t):
            out = pool(inp)
        out.backward(grad)
        results.append((out, inp.grad, kept))
    (out_a, grad_a, kept_a), (out_b, grad_b, kept_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(grad_a, grad_b) and grad_b.abs().sum() > 0
    assert torch.int64 in kept_a and kept_b == [dtype]
    with torch.no_grad():  # inference (and export) runs the stock op
        assert torch.equal(StemMaxPool().eval()(x), out_a)
