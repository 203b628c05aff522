"""libs/abn.py: InPlace-ABN's math (scale |weight| + eps), memory, backends, checkpoints and sync."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from libs import ABN, BACKEND, InPlaceABN, InPlaceABNSync
from libs.abn import InPlaceABNFunction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATION_PARAM = {"leaky_relu": 0.01, "elu": 1.0, "identity": 0.0, "none": 0.0}
# Negative and near-zero weights are where |weight| + eps and a plain weight disagree.
WEIGHT = [1.5, -0.7, 1e-3, -2e-3, 0.3, -1e-4]
BIAS = [0.1, -0.2, 0.5, 0.0, -1.0, 0.3]
C = len(WEIGHT)
needs_compiled = pytest.mark.skipif(
    BACKEND != "compiled", reason="compiled backend inactive (inplace-abn absent or DFPNET_PURE_ABN=1)"
)


def reference(x, weight, bias, running_mean, running_var, training, activation, eps=1e-5, momentum=0.1):
    """The authors' math with stock PyTorch ops (docs/reference.md section 5)."""
    y = F.batch_norm(x, running_mean, running_var, weight.abs() + eps, bias, training, momentum, eps)
    if activation == "leaky_relu":
        return F.leaky_relu(y, ACTIVATION_PARAM[activation])
    if activation == "elu":
        return F.elu(y, ACTIVATION_PARAM[activation])
    return y


def make_layer(cls, activation, dtype=torch.float32, backend="pure"):
    layer = cls(C, activation=activation, activation_param=ACTIVATION_PARAM[activation] or 0.01)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(WEIGHT))
        layer.bias.copy_(torch.tensor(BIAS))
        layer.running_mean.copy_(torch.linspace(-0.5, 0.5, C))
        layer.running_var.copy_(torch.linspace(0.5, 2.0, C))
    if hasattr(layer, "backend"):
        layer.backend = backend
    return layer.to(dtype)


def run_both(layer, x, activation, training, upstream):
    """Layer and reference on the same input: outputs, input/weight/bias grads, running stats."""
    ref_w = layer.weight.detach().clone().requires_grad_()
    ref_b = layer.bias.detach().clone().requires_grad_()
    ref_mean, ref_var = layer.running_mean.clone(), layer.running_var.clone()
    layer.train(training)
    x_layer = x.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = layer(x_layer)
    y_ref = reference(x_ref, ref_w, ref_b, ref_mean, ref_var, training, activation)
    (y * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    got = (y, x_layer.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
    want = (y_ref, x_ref.grad, ref_w.grad, ref_b.grad, ref_mean, ref_var)
    return got, want


def assert_all_close(got, want, **tol):
    names = ("output", "input grad", "weight grad", "bias grad", "running_mean", "running_var")
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity", "none"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", [InPlaceABN, InPlaceABNSync, ABN])
def test_matches_reference_float64(cls, activation, training):
    torch.manual_seed(0)
    layer = make_layer(cls, activation, torch.float64)
    x = torch.randn(3, C, 5, 4, dtype=torch.float64) * 2 + 0.5
    got, want = run_both(layer, x, activation, training, torch.randn_like(x))
    assert_all_close(got, want, rtol=1e-9, atol=1e-11)
    if training:  # the running statistics did move, with the unbiased variance
        unbiased = x.transpose(0, 1).reshape(C, -1).var(dim=1, unbiased=True)
        torch.testing.assert_close(
            layer.running_var, 0.9 * torch.linspace(0.5, 2.0, C, dtype=torch.float64) + 0.1 * unbiased
        )


@pytest.mark.parametrize("shape,channels_last", [((5, C), False), ((2, C, 7), False), ((2, C, 3, 5), True)])
def test_shapes_and_channels_last(shape, channels_last):
    torch.manual_seed(1)
    layer = make_layer(InPlaceABN, "leaky_relu", torch.float64)
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = run_both(layer, x, "leaky_relu", True, torch.randn(*shape, dtype=torch.float64))
    assert_all_close(got, want, rtol=1e-9, atol=1e-11)
    if channels_last:
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
def test_explicit_path_matches_reference(activation):
    # float64 input, float32 parameters: ATen's fused kernels refuse the mix, the explicit path
    # (the one synchronised training uses) computes it.
    torch.manual_seed(10)
    layer = make_layer(InPlaceABN, activation)
    x = torch.randn(3, C, 4, 4, dtype=torch.float64) * 2 + 0.5
    x_in = x.clone().requires_grad_()
    y = layer(x_in)
    upstream = torch.randn_like(x)
    (y * upstream).sum().backward()
    twin = make_layer(InPlaceABN, activation, torch.float64)
    got, want = run_both(twin, x, activation, True, upstream)
    assert_all_close(
        (
            y,
            x_in.grad,
            layer.weight.grad.double(),
            layer.bias.grad.double(),
            layer.running_mean.double(),
            layer.running_var.double(),
        ),
        want,
        rtol=1e-6,
        atol=1e-7,
    )
    assert layer.weight.grad.dtype == torch.float32 and x_in.grad.dtype == torch.float64


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
def test_gradcheck_pure_function(activation):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([0.8, -1.2, 0.05], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.2, -0.3, 0.1], dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias):
        return InPlaceABNFunction.apply(
            x, weight, bias, None, None, 0.1, 1e-5, activation, ACTIVATION_PARAM[activation], None, False
        )

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
def test_float32_close_to_reference(activation):
    torch.manual_seed(3)
    layer = make_layer(InPlaceABN, activation)
    x = torch.randn(4, C, 8, 8) * 3 - 1
    got, want = run_both(layer, x, activation, True, torch.randn_like(x))
    # Backward recovers x_hat from y: with |weight| + eps ~ 1e-4 that costs ~3 of float32's digits.
    assert_all_close(got, want, rtol=1e-3, atol=2e-4)


@pytest.mark.parametrize(
    "backend,dtype,channels_last",
    [
        ("pure", torch.float64, False),
        ("pure", torch.float64, True),
        pytest.param("compiled", torch.float32, False, marks=needs_compiled),
    ],
)
def test_overwrites_conv_output_only(backend, dtype, channels_last):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, C, 3, padding=1).to(dtype)
    layer = make_layer(InPlaceABN, "leaky_relu", dtype, backend=backend)
    image = torch.randn(2, 3, 6, 6, dtype=dtype, requires_grad=True)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        image = image.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    features = conv(image)
    y = layer(features)
    assert y.data_ptr() == features.data_ptr()  # conv output reused: no new activation buffer
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    grads = (y.detach().clone(), image.grad.clone(), conv.weight.grad.clone())

    image.grad = conv.weight.grad = None
    w = layer.weight.detach().clone()
    y_ref = reference(conv(image), w, layer.bias.detach(), None, None, True, "leaky_relu")
    (y_ref * upstream).sum().backward()
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grads, (y_ref.detach(), image.grad, conv.weight.grad), **tol)

    leaf = torch.randn(2, C, 3, 3, dtype=dtype)
    kept = leaf.clone()
    layer(leaf)
    assert torch.equal(leaf, kept)  # a caller's own tensor is never overwritten


def test_output_modified_in_place_is_refused():
    # Backward needs the output untouched: an in-place ReLU right after the layer must fail loudly.
    layer = InPlaceABN(4, activation="none")
    layer.backend = "pure"
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = F.relu(layer(x), inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def saved_bytes(fn, x) -> int:
    """Bytes of the distinct storages autograd keeps for fn's backward, fn's parameters excepted
    (they exist anyway: saving one costs nothing)."""
    storages = {}
    params = {p.untyped_storage().data_ptr() for p in fn.parameters()} if isinstance(fn, nn.Module) else set()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


def test_saves_at_most_half_of_batchnorm_plus_activation():
    torch.manual_seed(5)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    layer = InPlaceABN(8)
    layer.backend = "pure"
    stock = nn.Sequential(nn.BatchNorm2d(8), nn.LeakyReLU(0.01))
    ours, theirs = saved_bytes(layer, x), saved_bytes(stock, x)
    assert ours >= x.numel() * 4  # it does keep the output
    assert ours <= theirs / 2, (ours, theirs)


def test_state_dict_and_strict_loading():
    layer = InPlaceABNSync(C)
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert all(t.dtype == torch.float32 for t in layer.state_dict().values())
    assert torch.equal(layer.weight, torch.ones(C)) and torch.equal(layer.bias, torch.zeros(C))
    assert torch.equal(layer.running_mean, torch.zeros(C)) and torch.equal(layer.running_var, torch.ones(C))

    authors = {
        "weight": torch.randn(C),
        "bias": torch.randn(C),
        "running_mean": torch.randn(C),
        "running_var": torch.rand(C) + 0.5,
    }
    for cls in (InPlaceABN, InPlaceABNSync, ABN):
        fresh = cls(C)
        fresh.load_state_dict(authors, strict=True)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in authors.items())
    # BatchNorm2d / inplace-abn checkpoints carry num_batches_tracked: accepted, ignored.
    fresh = InPlaceABN(C)
    fresh.load_state_dict(nn.BatchNorm2d(C).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        InPlaceABN(C).load_state_dict({"weight": torch.ones(C)}, strict=True)


def test_bfloat16_autocast():
    torch.manual_seed(6)
    x32 = torch.randn(4, C, 6, 6) * 2 + 1
    x16 = x32.to(torch.bfloat16)
    upstream = torch.randn_like(x32)
    layer = make_layer(InPlaceABN, "leaky_relu", backend=BACKEND)  # the package refuses bf16: pure serves
    twin = make_layer(InPlaceABN, "leaky_relu")  # float32 on the same (bf16-rounded) values
    x_in = x16.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x_in)
    assert type(y.grad_fn).__name__ == "InPlaceABNFunctionBackward"
    (y.float() * upstream).sum().backward()
    x_twin = x16.float().requires_grad_()
    y_twin = twin(x_twin)
    (y_twin * upstream).sum().backward()

    assert y.dtype == torch.bfloat16 and x_in.grad.dtype == torch.bfloat16
    for t in (layer.weight, layer.bias, layer.running_mean, layer.running_var, layer.weight.grad):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    # Statistics in float32: the running stats equal the float32 computation to rounding.
    torch.testing.assert_close(layer.running_mean, twin.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, twin.running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.float(), y_twin, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.bias.grad, twin.bias.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x_in.grad.float(), x_twin.grad, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_float32_defaults_to_pure_backend(channels_last):
    # The package's CPU kernels are slower than ATen's fused batch norm (bench/RESULTS.md): a
    # layer left at its default backend must not hand CPU tensors to them.
    layer = InPlaceABN(C).train()
    x = torch.randn(3, C, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = layer(x.requires_grad_())
    assert type(y.grad_fn).__name__ == "InPlaceABNFunctionBackward"
    assert layer.backend == ("auto" if BACKEND == "compiled" else "pure")


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
@needs_compiled
def test_compiled_matches_pure(activation):
    torch.manual_seed(7)
    x = (torch.randn(3, C, 5, 6) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn_like(x)
    results = {}
    for backend in ("compiled", "pure"):
        layer = make_layer(InPlaceABN, activation, backend=backend)
        with torch.no_grad():
            layer.weight[3] = 0.0  # d|w|/dw at 0: both take +1
        x_in = x.clone().requires_grad_()
        y = layer(x_in)
        expected = "InPlaceABNBackward" if backend == "compiled" else "InPlaceABNFunctionBackward"
        assert type(y.grad_fn).__name__ == expected  # the backend asked for did run
        (y * upstream).sum().backward()
        results[backend] = (
            y,
            x_in.grad,
            layer.weight.grad,
            layer.bias.grad,
            layer.running_mean,
            layer.running_var,
        )
    assert_all_close(results["compiled"], results["pure"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
@needs_compiled
def test_compiled_eval_matches_ours(activation):
    from inplace_abn.functions import inplace_abn

    torch.manual_seed(8)
    layer = make_layer(InPlaceABN, activation).eval()
    x = torch.randn(2, C, 4, 4)
    x_pkg = x.clone().requires_grad_()
    y_pkg = inplace_abn(
        x_pkg * 1,
        layer.weight,
        layer.bias,
        layer.running_mean.clone(),
        layer.running_var.clone(),
        False,
        0.1,
        1e-5,
        activation,
        ACTIVATION_PARAM[activation],
    )
    y_pkg.sum().backward()
    x_ours = x.clone().requires_grad_()
    y_ours = layer(x_ours)
    y_ours.sum().backward()
    torch.testing.assert_close(y_ours, y_pkg)
    torch.testing.assert_close(x_ours.grad, x_pkg.grad)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        InPlaceABN(4, activation="relu")
    with pytest.raises(ValueError, match="activation_param must be positive"):
        InPlaceABN(4, activation_param=0.0)
    expected = r"InPlaceABN\(4\) expects an input of shape N x 4 x \.\.\., got \(2, 3, 5\)"
    with pytest.raises(ValueError, match=expected):
        InPlaceABN(4)(torch.randn(2, 3, 5))
    layer = InPlaceABN(4)
    layer.backend = "pure"
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 4, 1, 1))


def _backend_report(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DFPNET_PURE_ABN"}
    if env_value is not None:
        env["DFPNET_PURE_ABN"] = env_value
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "import libs; libs.InPlaceABN(2); libs.InPlaceABNSync(2)\n"
        "print(libs.BACKEND, libs.InPlaceABN(2).backend)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _package_importable() -> bool:
    try:
        import inplace_abn  # noqa: F401
    except ImportError:
        return False
    return True


def test_env_var_forces_pure_backend():
    forced = _backend_report("1")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split() == ["pure", "pure"]
    assert forced.stderr.count("dfpnet InPlace-ABN backend: pure PyTorch (DFPNET_PURE_ABN=1)") == 1

    default = _backend_report(None)
    assert default.returncode == 0, default.stderr
    if _package_importable():
        assert default.stdout.split() == ["compiled", "auto"]  # the package on CUDA, pure on the CPU
        assert default.stderr.count("dfpnet InPlace-ABN backend: compiled inplace-abn ") == 1
        assert "(CUDA), pure PyTorch otherwise (CPU included)" in default.stderr
    else:
        assert default.stdout.split() == ["pure", "pure"]
        assert default.stderr.count("dfpnet InPlace-ABN backend: pure PyTorch") == 1


# ---- synchronisation across processes (gloo, CPU) -------------------------------------------------------

# (samples on rank 0, samples on rank 1, activation, dtype). float64 makes the comparison exact; the
# float32 case shows the realistic precision (near-zero weights cost float32 ~3 digits, see above).
SYNC_CASES = {
    "equal-leaky_relu": (1, 1, "leaky_relu", torch.float64),
    "unequal-leaky_relu": (1, 2, "leaky_relu", torch.float64),
    "unequal-elu": (2, 1, "elu", torch.float64),
    "unequal-identity": (1, 2, "identity", torch.float64),
    "equal-leaky_relu-float32": (1, 1, "leaky_relu", torch.float32),
}


def _sync_inputs(case: str):
    torch.manual_seed(9)
    first, second, _, dtype = SYNC_CASES[case]
    x = torch.randn(first + second, C, 4, 5, dtype=dtype) * 2 + 0.5
    return x, torch.randn_like(x)


def _sync_step(case: str, x: torch.Tensor, upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    _, _, activation, dtype = SYNC_CASES[case]
    layer = make_layer(InPlaceABNSync, activation, dtype, backend=BACKEND)
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * upstream).sum().backward()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "weight_grad": layer.weight.grad.clone(),
        "bias_grad": layer.bias.grad.clone(),
        "running_mean": layer.running_mean.clone(),
        "running_var": layer.running_var.clone(),
    }


def _sync_worker(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        for case, (first, second, _, _) in SYNC_CASES.items():
            x, upstream = _sync_inputs(case)
            part = slice(0, first) if rank == 0 else slice(first, first + second)
            result = _sync_step(case, x[part], upstream[part])
            for key in ("weight_grad", "bias_grad"):  # parameter grads are per-process shares
                dist.all_reduce(result[key])
            torch.save(result, os.path.join(out_dir, f"{case}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sync_two_processes_equal_one_process(tmp_path):
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_sync_worker, args=(2, init_method, str(tmp_path)), nprocs=2, join=True)
    for case in SYNC_CASES:
        x, upstream = _sync_inputs(case)
        whole = _sync_step(case, x, upstream)
        tol = dict(rtol=1e-9, atol=1e-10) if x.dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
        ranks = [torch.load(tmp_path / f"{case}_rank{r}.pt") for r in range(2)]
        for key in ("y", "x_grad"):
            torch.testing.assert_close(
                torch.cat([r[key] for r in ranks]),
                whole[key],
                **tol,
                msg=lambda m, key=key, case=case: f"{case} {key}: {m}",
            )
        for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            for r in ranks:
                torch.testing.assert_close(
                    r[key], whole[key], **tol, msg=lambda m, key=key, case=case: f"{case} {key}: {m}"
                )


# ---- CUDA (skipped without a GPU; run on a lent GPU machine by bench/cuda_suite.sh) ----
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)],
    ids=["fp32", "fp16", "bf16"],
)
@pytest.mark.parametrize("backend", ["pure", "compiled"])
@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
def test_cuda_matches_float64_reference(backend, activation, dtype, tol):
    if backend == "compiled" and BACKEND != "compiled":
        pytest.skip("inplace-abn not importable")
    torch.manual_seed(12)
    x64 = (torch.randn(4, C, 9, 7, dtype=torch.float64) * 2 + 0.5).contiguous(
        memory_format=torch.channels_last
    )
    upstream = torch.randn_like(x64)
    layer = make_layer(InPlaceABN, activation, backend=backend).cuda()  # float32 parameters
    if dtype != torch.float32:
        # Backward recovers x_hat = (y - bias) / |w|, which scales y's rounding by |bias| / |w|: in
        # 16 bits a weight of 1e-4 leaves no correct digit of its gradient (in both backends).
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([1.5, -0.7, 0.5, -0.4, 0.3, -0.9]))
    x_in = x64.to("cuda", dtype).requires_grad_()
    y = layer(x_in * 1)  # a non-leaf, as inside a network
    (y.double() * upstream.cuda()).sum().backward()
    twin = make_layer(InPlaceABN, activation, torch.float64)  # the same rounded input, on the CPU
    with torch.no_grad():
        twin.weight.copy_(layer.weight)
    got, want = run_both(twin, x_in.detach().double().cpu(), activation, True, upstream)
    assert y.dtype == dtype and x_in.grad.dtype == dtype
    assert_all_close(
        (
            y.cpu(),
            x_in.grad.cpu(),
            layer.weight.grad.cpu(),
            layer.bias.grad.cpu(),
            layer.running_mean.cpu(),
            layer.running_var.cpu(),
        ),
        [w.to(torch.float64) for w in want],
        rtol=tol,
        atol=tol,
        check_dtype=False,
    )


def test_torch_compile_traces_one_graph_and_matches_eager():
    # fullgraph=True fails on any graph break: the in-place Function must not be traced.
    torch.manual_seed(13)
    net = nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1, bias=False),
        InPlaceABNSync(C),
        nn.Conv2d(C, C, 3, padding=1, bias=False),
        InPlaceABN(C, activation="identity"),
        nn.ReLU(),
        nn.Conv2d(C, 4, 1),
    )
    with torch.no_grad():
        for layer in (net[1], net[3]):
            layer.weight.copy_(torch.tensor(WEIGHT))
            layer.bias.copy_(torch.tensor(BIAS))
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 8, 8)
    y = torch.compile(net, fullgraph=True)(x)
    y.square().sum().backward()
    y_eager = twin(x)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(
            p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
    for a, b in zip(net.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b)


def test_set_inplace_off_is_the_same_math_with_more_memory():
    from libs import set_inplace

    torch.manual_seed(14)
    net = nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1, bias=False),
        InPlaceABNSync(C),
        nn.Conv2d(C, C, 1, bias=False),
        InPlaceABN(C, activation="identity"),
    )
    twin = copy.deepcopy(net)
    assert set_inplace(twin, False) == 2 and not twin[1].inplace and net[1].inplace
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    net.double(), twin.double()
    outputs = []
    for model in (net, twin):
        y = model(x)
        y.square().sum().backward()
        outputs.append((y, [p.grad for p in model.parameters()], list(model.buffers())))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-9, atol=1e-11)
    fresh = copy.deepcopy(net)
    assert saved_bytes(twin, x) > saved_bytes(fresh, x)  # plain autograd keeps the norms' inputs too
