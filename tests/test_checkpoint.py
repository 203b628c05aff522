"""utils/checkpoint.py: the authors' files load strictly, anything else is refused clearly."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
from torch import nn

from networks.dfpnet import DFPNet
from utils.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_imagenet_backbone,
    load_model_weights,
    read_checkpoint,
    save_atomic,
)


@pytest.fixture(scope="module")
def trained() -> DFPNet:
    torch.manual_seed(1)
    net = DFPNet(8)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.uniform_(-1, 1)
    return net


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(tmp_path, trained):
    path = tmp_path / "DFPnet_epoch_5.pth"
    save_atomic(trained.state_dict(), path)
    fresh = DFPNet(8)
    load_model_weights(fresh, path)
    assert _same(fresh, trained)
    assert [p.name for p in tmp_path.iterdir()] == ["DFPnet_epoch_5.pth"]  # no temporary left behind


def test_authors_format_with_module_prefix_and_legacy_serialisation(tmp_path, trained):
    """Their files: DataParallel's ``module.`` prefix, PyTorch 0.4's pre-zip format, no
    num_batches_tracked."""
    sd = OrderedDict(("module." + k, v) for k, v in trained.state_dict().items())
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    path = tmp_path / "DFPnet_epoch_495.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    fresh = DFPNet(8)
    load_model_weights(fresh, path)
    assert _same(fresh, trained)


def test_training_state_file_loads_its_model(tmp_path, trained):
    path = tmp_path / "last.pth"
    save_atomic(
        {"model": trained.state_dict(), "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    fresh = DFPNet(8)
    load_model_weights(fresh, path)
    assert _same(fresh, trained)


def test_missing_num_batches_tracked_loads_strictly(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "bn.pth"
    save_atomic(sd, path)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_model_weights(other, path)
    assert torch.equal(other[0].weight, net[0].weight)


def test_another_network_is_refused_naming_keys(tmp_path):
    path = tmp_path / "other.pth"
    save_atomic(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 2)).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(DFPNet(8), path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "701 missing keys" in msg and "conv1.weight" in msg
    assert "4 unexpected keys" in msg and "0.weight" in msg


def test_other_class_count_is_refused_with_a_hint(tmp_path, trained):
    path = tmp_path / "twenty.pth"
    save_atomic(DFPNet(20).state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"4 mis-shaped \(aux_pred.4.weight: file 20x16x1x1, model 8x16x1x1"
    ):
        load_model_weights(DFPNet(8), path)
    with pytest.raises(CheckpointError, match="another number of classes: give its label set with --labels"):
        load_model_weights(DFPNet(8), path)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_pickle_with_code_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Boom()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned_marker").exists()


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"hello, I am a text file\n", "not a readable")])
def test_non_checkpoints_are_refused(tmp_path, content, reason):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason):
        read_checkpoint(path)


def test_truncated_file_is_refused(tmp_path, trained):
    path = tmp_path / "full.pth"
    save_atomic(trained.state_dict(), path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable"):
        load_model_weights(DFPNet(8), cut)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        extract_state_dict(read_checkpoint(path), path)


def test_imagenet_backbone_initialisation(tmp_path, trained):
    backbone = {k: v for k, v in trained.state_dict().items() if k.startswith(DFPNet.backbone_prefixes())}
    imagenet = {"module." + k: v for k, v in backbone.items()}
    imagenet["module.fc.weight"] = torch.zeros(1000, 2048)
    imagenet["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet101-imagenet.pth"
    save_atomic(imagenet, path)
    fresh = DFPNet(8)
    head_before = fresh.outc[2].weight.clone()
    loaded, total = load_imagenet_backbone(fresh, path)
    assert (loaded, total) == (len(backbone), len(backbone)) and total == 530
    assert torch.equal(fresh.layer3[22].conv2.weight, trained.layer3[22].conv2.weight)
    assert torch.equal(fresh.outc[2].weight, head_before)  # the head is not touched


def _torchvision_like(trained: DFPNet) -> dict[str, torch.Tensor]:
    """torchvision's ResNet-101 key set: a 7x7 conv1, no conv2/conv3 stem, 64-channel layer1 input."""
    sd = {k: v for k, v in trained.state_dict().items() if k.startswith(DFPNet.backbone_prefixes())}
    sd = {k: v for k, v in sd.items() if not k.startswith(("conv2.", "bn2.", "conv3.", "bn3."))}
    sd["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    sd["layer1.0.downsample.0.weight"] = torch.zeros(256, 64, 1, 1)
    sd["fc.weight"] = torch.zeros(1000, 2048)
    return sd


def test_imagenet_with_a_7x7_stem_is_refused(tmp_path, trained):
    path = tmp_path / "torchvision_resnet101.pth"
    save_atomic(_torchvision_like(trained), path)
    with pytest.raises(
        CheckpointError, match=r"517 of 530 backbone tensors match.*stem does not fit \(conv1.weight"
    ):
        load_imagenet_backbone(DFPNet(8), path)


def test_imagenet_with_too_few_matches_is_refused(tmp_path, trained):
    sd = {k: v for k, v in trained.state_dict().items() if k.startswith(("conv", "bn", "layer1.", "layer2."))}
    path = tmp_path / "resnet_half.pth"
    save_atomic(sd, path)
    with pytest.raises(
        CheckpointError, match=r"\d+ of 530 backbone tensors match by name and shape; this is not"
    ):
        load_imagenet_backbone(DFPNet(8), path)
