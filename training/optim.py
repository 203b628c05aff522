"""SGD that updates each parameter during backward (``train.py --update-in-backward``).

Plain SGD updates every parameter after backward, so at the end of backward all the gradients exist
at once beside what backward still holds: 61.2 M float32 numbers, 233 MiB. This optimizer applies
each parameter's update as soon as backward has accumulated its gradient, then frees that gradient:
the same update (``torch.optim.sgd.sgd``, which ``SGD.step`` calls, with the group's settings and the
momentum buffer kept where ``SGD`` keeps it), so the same weights, momentum and checkpoints.

What it cannot do, and ``training.config.setup`` refuses: average gradients over processes first
(DDP all-reduces after the hook has run) and unscale fp16 gradients (``GradScaler``).
"""

from __future__ import annotations

import torch
from torch.optim.sgd import sgd


class SGDInBackward(torch.optim.SGD):
    """``torch.optim.SGD`` whose update runs in backward, one parameter at a time.

    ``step()`` after such a backward finds no gradient left and changes nothing. A step whose loss is
    not finite must be caught before backward (``training.step.train_step`` does).
    """

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self._handles = [
            p.register_post_accumulate_grad_hook(self._update)
            for group in self.param_groups
            for p in group["params"]
        ]
        self._index_groups()

    def _index_groups(self) -> None:
        # load_state_dict replaces the group dicts, and set_lr writes the learning rate into them.
        self._group_of = {p: group for group in self.param_groups for p in group["params"]}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._index_groups()

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def _update(self, param: torch.Tensor) -> None:
        group = self._group_of[param]
        state = self.state[param]
        buffers = [state.get("momentum_buffer")]
        sgd(
            [param],
            [param.grad],
            buffers,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            has_sparse_grad=False,
            foreach=group["foreach"],
            fused=group["fused"],
        )
        if group["momentum"] != 0:
            state["momentum_buffer"] = buffers[0]
        param.grad = None
