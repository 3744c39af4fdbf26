#!/usr/bin/env python3
"""Writes the torchvision parity fixture for cobb's weight loader (run by hand, not in CI).

    ~/.cache/cobb-peers/bin/python scripts/make_parity_fixture.py worker/tests/fixtures/parity

Needs torch, torchvision and safetensors. Writes:
  efficientnet_tiny.safetensors  a reduced-width EfficientNet (width 0.25, depth 0.34 of B0,
                                 3 channels, 10 classes) with random weights and random
                                 BatchNorm statistics, in torchvision's key names
  efficientnet_tiny.pth          the same state_dict saved by torch.save
  expected.safetensors           `input` [2, 3, 64, 64] and torchvision's eval-mode `logits`
  keys.json                      torchvision key names and shapes of resnet18, resnet50,
                                 efficientnet_b0 and efficientnet_b6 (3 channels, 1000
                                 classes), so the key mapping of the full-size models is
                                 checked without shipping their weights
"""
import json
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

WIDTH, DEPTH = 0.25, 0.34


def tiny_efficientnet():
    settings, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=WIDTH, depth_mult=DEPTH)
    return EfficientNet(settings, dropout=0.2, num_classes=10, last_channel=last_channel)


def main(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    model = tiny_efficientnet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0.0, 0.1)
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "efficientnet_tiny.safetensors"))
    torch.save(model.state_dict(), out / "efficientnet_tiny.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    save_file({"input": x.contiguous(), "logits": logits.contiguous()}, str(out / "expected.safetensors"))

    keys = {}
    for name in ["resnet18", "resnet50", "efficientnet_b0", "efficientnet_b6"]:
        m = getattr(torchvision.models, name)(weights=None)
        keys[name] = {k: list(v.shape) for k, v in m.state_dict().items()}
    (out / "keys.json").write_text(json.dumps(keys, indent=0, sort_keys=True))
    print(f"wrote {out}: logits {logits.shape}, max |logit| {logits.abs().max():.3f}, torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "worker/tests/fixtures/parity"))
