"""Activated batch normalisation (InPlace-ABN) for DFPnet.

DFPnet's authors normalise with InPlace-ABN (Rota Bulo et al., CVPR 2018): batch norm and an
activation fused into one layer that keeps only its *output* for the backward pass and
recomputes what backward needs from it, which halves the activation memory of a BN + activation
pair. Their weights assume its math (docs/reference.md section 5):

    x_hat = (x - mean) / sqrt(var + eps)            batch statistics (biased var) in training,
                                                    running statistics in eval
    y     = act(x_hat * (|weight| + eps) + bias)    the scale is |weight| + eps, never weight

and, in training, running_mean / running_var move by `momentum` towards the batch mean and the
*unbiased* batch variance, like nn.BatchNorm2d.

Three layers share that math and the authors' state_dict names (weight, bias, running_mean,
running_var; no num_batches_tracked, which their checkpoints lack):

- `InPlaceABN`: the memory-saving layer. Two backends compute it:
    * the compiled `inplace-abn` package (mapillary, 1.x), where it is installed, for CUDA
      float32/float16 tensors;
    * a pure PyTorch autograd Function (`InPlaceABNFunction`) everywhere else, CPU included, or
      everywhere when the environment variable DFPNET_PURE_ABN=1 is set. The package's CPU
      kernels (float32) are slower than ATen's fused batch norm under the pure Function, most
      of all on channels-last tensors (bench/RESULTS.md section 11), so they serve only a layer
      whose `backend` is set to "compiled".
- `InPlaceABNSync`: the same, with batch statistics (and the backward's per-channel sums)
  synchronised over torch.distributed when more than one process runs.
- `ABN`: the same math with plain autograd (F.batch_norm on |weight| + eps, then the
  activation): no memory trick, the baseline for benchmarks and a drop-in norm layer.

In-place: like the authors' layer, InPlaceABN / InPlaceABNSync overwrite their input with the
result when that input comes straight out of a convolution (the conv -> ABN pattern of the whole
network); such a conv output must not be used again after the layer. Any other input is left
untouched.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = [
    "ABN",
    "ACTIVATIONS",
    "BACKEND",
    "BACKEND_DESCRIPTION",
    "InPlaceABN",
    "InPlaceABNFunction",
    "InPlaceABNSync",
    "set_inplace",
]

logger = logging.getLogger("dfpnet")

# "none" is the authors' spelling of "identity".
ACTIVATIONS = ("leaky_relu", "elu", "identity", "none")

FORCE_PURE_ENV = "DFPNET_PURE_ABN"
_FORCE_PURE = os.environ.get(FORCE_PURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")

_compiled_abn = None
_compiled_abn_sync = None
_COMPILED_VERSION = None
if not _FORCE_PURE:
    try:
        import inplace_abn as _inplace_abn_package
        from inplace_abn.functions import inplace_abn as _compiled_abn
        from inplace_abn.functions import inplace_abn_sync as _compiled_abn_sync

        _COMPILED_VERSION = getattr(_inplace_abn_package, "__version__", "(unknown version)")
    except ImportError:  # not installed, or built against another torch: the pure backend serves
        _compiled_abn = _compiled_abn_sync = None

#: "compiled" when the inplace-abn package serves the inputs it supports, else "pure".
BACKEND = "compiled" if _compiled_abn is not None else "pure"
if BACKEND == "compiled":
    BACKEND_DESCRIPTION = (
        f"compiled inplace-abn {_COMPILED_VERSION} (CUDA), pure PyTorch otherwise (CPU included)"
    )
elif _FORCE_PURE:
    BACKEND_DESCRIPTION = f"pure PyTorch ({FORCE_PURE_ENV}=1)"
else:
    BACKEND_DESCRIPTION = "pure PyTorch"

_backend_announced = False


def _announce_backend() -> None:
    # Logged at the first layer construction rather than at import: scripts configure logging
    # after their imports, and an import-time line would be lost.
    global _backend_announced
    if not _backend_announced:
        _backend_announced = True
        logger.info("InPlace-ABN backend: %s", BACKEND_DESCRIPTION)


def _canonical_activation(activation: str) -> str:
    return "identity" if activation == "none" else activation


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    # Statistics and per-channel arithmetic in float32 at least (float64 stays float64).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _sync_group():
    """The process group to synchronise over, or None for a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _overwritable(x: torch.Tensor) -> bool:
    # Overwriting is safe for autograd when the producer did not save its output: a convolution
    # saves its input and weight only. A view, a leaf or a tensor made under no_grad is left
    # alone so that the caller's own tensors never change.
    grad_fn = x.grad_fn
    return (
        grad_fn is not None
        and "Convolution" in type(grad_fn).__name__
        and x._base is None
        and (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)))
    )


def _activate_(y: torch.Tensor, activation: str, activation_param: float) -> torch.Tensor:
    if activation == "leaky_relu":
        return F.leaky_relu_(y, activation_param)
    if activation == "elu":
        return F.elu_(y, activation_param)
    return y


def _all_reduce_statistics(mean: torch.Tensor, var: torch.Tensor, count: int, group):
    """Combine per-process (mean, biased var, count) into the statistics of the whole batch.

    Two all_reduces (sums and counts, then squares centred on the global mean) in float64 keep
    the variance as exact as one process would get it, and allow unequal batches per process.
    """
    dtype = mean.dtype
    sums = torch.cat([mean.double() * count, mean.new_tensor([count], dtype=torch.float64)])
    dist.all_reduce(sums, group=group)
    total = int(sums[-1].item())
    global_mean = sums[:-1] / total
    centred = var.double() * count + count * (mean.double() - global_mean) ** 2
    dist.all_reduce(centred, group=group)
    return global_mean.to(dtype), (centred / total).to(dtype), total


def _check_count(count: int, x: torch.Tensor) -> None:
    if count <= 1:
        raise ValueError(
            f"InPlaceABN: expected more than 1 value per channel when training, got input of size "
            f"{tuple(x.shape)}"
        )


def _native_dtypes_ok(x: torch.Tensor, weight, running_mean) -> bool:
    """Whether ATen's fused batch norm accepts these dtypes (same dtype, or a 16-bit input with
    float32 parameters and statistics)."""
    param_dtypes = {t.dtype for t in (weight, running_mean) if t is not None}
    if x.dtype in (torch.float16, torch.bfloat16):
        return param_dtypes <= {torch.float32}
    return param_dtypes <= {x.dtype}


def _invert_activation(y: torch.Tensor, grad: torch.Tensor, activation: str, activation_param: float):
    """Pre-activation values and gradients recovered from the activation's output."""
    if activation == "leaky_relu":
        # A leaky ReLU with slope 1 / slope undoes one (y and its input share their sign).
        return (
            F.leaky_relu(y, 1.0 / activation_param),
            torch.ops.aten.leaky_relu_backward(grad, y, activation_param, True),
        )
    if activation == "elu":
        # Clamped: a saturated output (y == -alpha) has zero gradient and must not give -inf.
        ratio = (y / activation_param).clamp_(min=-1.0 + torch.finfo(y.dtype).eps)
        return (
            torch.where(y < 0, torch.log1p(ratio), y),
            torch.ops.aten.elu_backward(grad, activation_param, 1.0, 1.0, True, y),
        )
    return y, grad


class InPlaceABNFunction(torch.autograd.Function):
    """Training-mode InPlace-ABN in pure PyTorch: saves only the activated output.

    Saved for backward: the output y, the weight and bias (parameters: no new memory) and the
    per-channel inverse std. Backward inverts the activation from y (leaky ReLU: y / slope where
    y < 0; ELU: log1p(y / alpha)) and recovers x_hat = (y_pre - bias) / (|weight| + eps).

    In one process both passes run on ATen's fused batch-norm kernels, 16-bit tensors staying
    16-bit. Synchronised, or with dtypes the forward kernel refuses, the statistics and gradient
    sums are computed explicitly in float32 (and all-reduced).

    apply(x, weight, bias, running_mean, running_var, momentum, eps, activation,
    activation_param, group, overwrite) with activation in ("leaky_relu", "elu", "identity");
    weight/bias and the running statistics may be None; group is a torch.distributed group to
    synchronise over, or None; overwrite=True writes the result into x's memory.
    """

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        running_mean,
        running_var,
        momentum,
        eps,
        activation,
        activation_param,
        group,
        overwrite,
    ):
        # Dtypes are chosen explicitly below (statistics in float32): autocast must not retype them.
        with torch.autocast(x.device.type, enabled=False):
            acc = _accumulate_dtype(x.dtype)
            channels = x.shape[1]
            out = x if overwrite else torch.empty_like(x)
            fused = group is None and _native_dtypes_ok(x, weight, running_mean)
            if fused:
                count = x.numel() // channels
                _check_count(count, x)
                scale = None if weight is None else weight.abs() + eps
                invstd = torch.empty(channels, dtype=acc, device=x.device)
                # Updates the running statistics with the unbiased variance, as BatchNorm2d does.
                torch.ops.aten.native_batch_norm.out(
                    x,
                    scale,
                    bias,
                    running_mean,
                    running_var,
                    True,
                    momentum,
                    eps,
                    out=out,
                    save_mean=torch.empty_like(invstd),
                    save_invstd=invstd,
                )
            else:
                x_acc = x if x.dtype == acc else x.to(acc)
                var, mean = torch.var_mean(x_acc, dim=_reduce_dims(x), correction=0)
                count = x.numel() // channels
                if group is not None:
                    mean, var, count = _all_reduce_statistics(mean, var, count, group)
                _check_count(count, x)
                if running_mean is not None:
                    running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                if running_var is not None:
                    unbiased = var * (count / (count - 1))
                    running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
                invstd = torch.rsqrt(var + eps)
                gain = invstd if weight is None else invstd * (weight.to(acc).abs() + eps)
                shift = -mean * gain if bias is None else bias.to(acc) - mean * gain
                shape = _channel_shape(x)
                torch.addcmul(shift.view(shape), x_acc, gain.view(shape), out=out)
            _activate_(out, activation, activation_param)

        ctx.count = count
        ctx.eps = eps
        ctx.activation = activation
        ctx.activation_param = activation_param
        ctx.group = group
        ctx.has_weight = weight is not None
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        # weight and bias are parameters: saving them costs no memory.
        ctx.save_for_backward(out, weight, invstd, bias)
        if overwrite:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        y, weight, invstd, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w, need_b = need_w and ctx.has_weight, need_b and ctx.has_bias
        if not (need_x or need_w or need_b):
            return (None,) * 11
        with torch.autocast(y.device.type, enabled=False):
            acc = invstd.dtype
            count = ctx.count
            scale = torch.ones_like(invstd) if weight is None else weight.to(acc).abs() + ctx.eps
            # x_hat has zero mean over the batch, so the bias is what y_pre averages to: the
            # parameter itself (saved at no cost), or zero without one.
            bias = torch.zeros_like(invstd) if bias is None else bias.to(acc)
            if ctx.group is None:
                # 16-bit y and grad stay 16-bit: ATen's kernels take them beside float32 statistics
                # and accumulate in float32, which saves three full-size casts per layer.
                y_pre, dy = _invert_activation(y, grad_out.to(y.dtype), ctx.activation, ctx.activation_param)
                # ATen's batch-norm backward, fed y_pre as its input: with mean = bias and
                # invstd = 1 / scale it normalises y_pre to x_hat, and weight = scale^2 * invstd makes
                # its weight * invstd equal to ours, scale * invstd. Its weight gradient, sum(dy * x_hat),
                # does not depend on the weight it was given.
                grad_x, grad_scale, grad_b = torch.ops.aten.native_batch_norm_backward(
                    dy,
                    y_pre,
                    scale * scale * invstd,
                    None,
                    None,
                    bias,
                    1.0 / scale,
                    True,
                    ctx.eps,
                    [need_x, need_w, need_b],
                )
            else:
                shape = _channel_shape(y)
                dims = _reduce_dims(y)
                y_pre, dy = _invert_activation(
                    y.to(acc), grad_out.to(acc), ctx.activation, ctx.activation_param
                )
                inv_scale = 1.0 / scale
                x_hat = torch.addcmul((-bias * inv_scale).view(shape), y_pre, inv_scale.view(shape))
                sum_dy = dy.sum(dims)
                sum_dy_xhat = (dy * x_hat).sum(dims)
                # Parameter gradients are this process's share, like any parameter under DDP.
                grad_scale, grad_b = sum_dy_xhat, sum_dy
                grad_x = None
                if need_x:
                    sums = torch.stack([sum_dy, sum_dy_xhat])
                    dist.all_reduce(sums, group=ctx.group)
                    # dx = gain * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means over all processes
                    x_hat.mul_((sums[1] / count).view(shape)).add_((sums[0] / count).view(shape))
                    grad_x = (dy - x_hat).mul_((invstd * scale).view(shape))

            grad_x = grad_x.to(grad_out.dtype) if need_x else None
            grad_w = grad_b_out = None
            if need_w:
                # d|w|/dw taken as +1 at w == 0, as the compiled package does.
                grad_w = torch.where(weight < 0, -grad_scale, grad_scale).to(weight.dtype)
            if need_b:
                grad_b_out = grad_b.to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b_out, None, None, None, None, None, None, None, None


class _ActivatedBatchNorm(nn.Module):
    """Parameters, buffers and checks shared by ABN, InPlaceABN and InPlaceABNSync.

    Args:
        num_features: channels C of the N x C x ... input.
        eps: added to the variance, and to |weight| in the scale.
        momentum: weight of the current batch in the running statistics.
        affine: learn weight and bias (else scale 1, shift 0).
        activation: "leaky_relu", "elu", "identity" or "none" (= identity).
        activation_param: leaky ReLU slope or ELU alpha.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        activation: str = "leaky_relu",
        activation_param: float = 0.01,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        if int(num_features) <= 0:
            raise ValueError(f"{name}: num_features must be positive, got {num_features}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = bool(affine)
        self.activation = activation
        self.activation_param = float(activation_param)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features, dtype=torch.float32))
            self.bias = nn.Parameter(torch.zeros(self.num_features, dtype=torch.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(self.num_features, dtype=torch.float32))
        self.register_buffer("running_var", torch.ones(self.num_features, dtype=torch.float32))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # BatchNorm2d and the inplace-abn package save a batch counter that this layer has no use
        # for (momentum is fixed); accept their checkpoints instead of failing a strict load.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects an input of shape "
                f"N x {self.num_features} x ..., got {tuple(x.shape)}"
            )

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Running statistics make the layer a per-channel affine map; plain autograd keeps
        # gradients flowing for fine-tuning with frozen statistics.
        acc = _accumulate_dtype(x.dtype)
        gain = torch.rsqrt(self.running_var.to(acc) + self.eps)
        if self.affine:
            gain = gain * (self.weight.to(acc).abs() + self.eps)
            shift = self.bias.to(acc) - self.running_mean.to(acc) * gain
        else:
            shift = -self.running_mean.to(acc) * gain
        shape = _channel_shape(x)
        y = torch.addcmul(shift.view(shape), x, gain.view(shape)).to(x.dtype)
        return _activate_(y, _canonical_activation(self.activation), self.activation_param)

    def _autograd_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batch norm with scale |weight| + eps, then the activation, under plain autograd."""
        scale = self.weight.abs() + self.eps if self.affine else None
        y = F.batch_norm(
            x, self.running_mean, self.running_var, scale, self.bias, self.training, self.momentum, self.eps
        )
        return _activate_(y, _canonical_activation(self.activation), self.activation_param)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
        text += f"activation={self.activation}"
        if self.activation in ("leaky_relu", "elu"):
            text += f"[{self.activation_param}]"
        return text


class ABN(_ActivatedBatchNorm):
    """Activated batch norm with plain autograd: InPlace-ABN's math without its memory trick.

    Batch norm with scale |weight| + eps, then the activation. Autograd saves the input and the
    activation's output (twice InPlaceABN's activation memory). Used as the baseline in benchmarks
    and as a drop-in `norm_layer` that needs no custom autograd Function.

    Takes the arguments of `_ActivatedBatchNorm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._autograd_forward(x)


class InPlaceABN(_ActivatedBatchNorm):
    """InPlace-ABN (Rota Bulo et al. 2018): batch norm + activation that saves only its output.

    y = act((x - mean) / sqrt(var + eps) * (|weight| + eps) + bias); batch statistics in training
    (running_var updated with the unbiased variance), running statistics in eval. Training runs the
    compiled inplace-abn package where it serves the input (CUDA float32/float16) and
    `InPlaceABNFunction` otherwise; eval is a plain per-channel affine map. A conv output passed
    in during training is overwritten with the result (see the module docstring).

    Takes the arguments of `_ActivatedBatchNorm`; `activation_param` must be positive here, so that
    backward can invert the activation from the output.

    Attribute `backend` may be set per layer, e.g. to benchmark one backend against the other:
    "auto" (the default where the package is installed: the package on CUDA, pure on the CPU),
    "compiled" (the package wherever it accepts the input, CPU float32 included) or "pure"
    (the default without the package). Attribute `inplace` (default
    True; see `set_inplace`) False runs the same math under plain autograd, as `ABN` does: more
    activation memory, fewer kernel launches (faster where the host, not the device, limits).
    """

    def __init__(self, *args, **kwargs) -> None:  # the arguments of _ActivatedBatchNorm
        super().__init__(*args, **kwargs)
        if self.activation in ("leaky_relu", "elu") and self.activation_param <= 0:
            raise ValueError(
                f"{type(self).__name__}: activation_param must be positive for {self.activation} (backward "
                f"inverts the activation from its output), got {self.activation_param}"
            )
        self.backend = "auto" if BACKEND == "compiled" else "pure"
        self.inplace = True
        _announce_backend()

    def _compiled_serves(self, x: torch.Tensor) -> bool:
        if self.backend == "pure":
            return False
        if _compiled_abn is None:
            raise RuntimeError(
                f"{type(self).__name__}: backend 'compiled' needs the inplace-abn package, which is not "
                f"importable; install it or set the layer's backend to 'pure'"
            )
        if x.is_cuda:
            return x.dtype in (torch.float32, torch.float16)
        # The package's CPU backward is a scalar, single-threaded loop (strided by C on
        # channels-last tensors), and its forward statistics make full-size temporaries: ATen's
        # fused batch norm under the pure Function is faster, with the same numbers.
        return self.backend == "compiled" and x.device.type == "cpu" and x.dtype == torch.float32

    def _train_forward(self, x: torch.Tensor, group) -> torch.Tensor:
        if group is None and (not self.inplace or torch.compiler.is_compiling()):
            # torch.compile cannot trace the in-place Function (it breaks the graph at every layer
            # and recompiles per channel count); given the plain math, Inductor fuses norm and
            # activation and chooses itself what to save for backward. Synchronised layers keep
            # the Function: it holds the all-reduces.
            return self._autograd_forward(x)
        activation = _canonical_activation(self.activation)
        overwrite = _overwritable(x)
        if self._compiled_serves(x) and (group is None or x.is_cuda):
            # The package always writes into its input.
            x = x if overwrite else x.clone()
            args = (
                x,
                self.weight,
                self.bias,
                self.running_mean,
                self.running_var,
                True,
                self.momentum,
                self.eps,
                activation,
                self.activation_param,
            )
            return _compiled_abn(*args) if group is None else _compiled_abn_sync(*args, group=group)
        return InPlaceABNFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.momentum,
            self.eps,
            activation,
            self.activation_param,
            group,
            overwrite,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        return self._train_forward(x, group=None)


class InPlaceABNSync(InPlaceABN):
    """InPlaceABN with batch statistics synchronised across torch.distributed processes.

    When torch.distributed is initialised with more than one process, training-mode forward
    all-reduces the per-channel sums, centred squares and counts (unequal batches per process
    are fine) and backward all-reduces its per-channel gradient sums, so N processes give the
    outputs, input gradients and running statistics of one process holding the whole batch
    (parameter gradients are each process's share, summed or averaged by DDP as usual).
    Otherwise it is exactly InPlaceABN. Every process must call it the same number of times.
    CUDA inputs use the compiled package's synchronised path when it is installed; CPU inputs
    (gloo) use the pure one. Arguments as for InPlaceABN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self.training:
            return self._eval_forward(x)
        return self._train_forward(x, group=_sync_group())


def set_inplace(model: nn.Module, inplace: bool) -> int:
    """Switch every InPlaceABN(Sync) in ``model`` between the in-place memory trick (True) and plain
    autograd (False); same outputs and gradients either way. Returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, InPlaceABN)]
    for layer in layers:
        layer.inplace = inplace
    return len(layers)
