"""Generate ``torch_resnet18.onnx`` and ``torch_resnet18_expected.npz`` (run once, outside CI).

A torchvision ResNet18 (BasicBlock, layers [2, 2, 2, 2], its stem, strides, residual adds,
BatchNorm and adaptive average pool) with 6 classes, exported by ``torch.onnx.export`` the
way PyTorch users export a classifier (NCHW float32 input, a dynamic batch axis, logits out).
To keep the committed file small the widths are a quarter of torchvision's (16, 32, 64, 128
channels instead of 64..512; 0.70 M parameters, fp32): the topology and the operators are
torchvision's own, built by ``torchvision.models.resnet.ResNet``; only ``planes`` differ.
``--width 1`` gives the real resnet18 (11.2 M parameters, 43 MB; for the benchmark only).

Weights: seeded init, then a few epochs of Adam on the seeded images and their labels
(so the predictions spread over the classes as a trained model's do).
Images: ``make_images`` (pure numpy, seeded; the test regenerates them byte for byte), fed as
torchvision's ``ToTensor`` + ``Normalize(ImageNet mean, std)`` would, i.e. the tool's
``--scale imagenet``. PyTorch's own logits and predictions per image go to the npz.

Needs torch and torchvision, which the project does not install: run it in a separate venv,
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision onnx onnxscript
    /tmp/torchenv/bin/python tests/core/data/make_torch_resnet18_onnx.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
N_CLASSES = 6
SIZE = 64
N_IMAGES = 240
SEED = 20
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_images(n: int = N_IMAGES, size: int = SIZE, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size, 3) smooth colour fields with a disc (odd i) or a bar (even i) of a
    random colour, and their labels int (n,): 3 * (disc) + the shape colour's strongest channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        grad = rng.uniform(-120, 120, (2, 3))
        img = base + yy[..., None] * grad[0] + xx[..., None] * grad[1]
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.3)
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if i % 2 else (np.abs(yy - cy) < r / 3)
        colour = rng.uniform(0, 255, 3)
        img[shape] = colour
        labels[i] = 3 * (i % 2) + int(np.argmax(colour))
        img += rng.normal(0, 12, img.shape)
        out[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out, labels


def normalise(images: np.ndarray) -> np.ndarray:
    """NCHW float32 as ToTensor + Normalize(ImageNet) give."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _torchvision_resnet():
    """torchvision.models.resnet's BasicBlock and ResNet. PyPI's torchvision wheel is built for
    the CUDA torch wheel; with the CPU torch wheel its compiled ops do not load and importing
    ``torchvision`` fails in ``_meta_registrations`` (``operator torchvision::nms does not
    exist``). The models are plain Python, so the package is entered without its __init__."""
    import importlib.util
    import sys
    import types

    try:
        from torchvision.models.resnet import BasicBlock, ResNet
        return BasicBlock, ResNet
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = package
    from torchvision.models.resnet import BasicBlock, ResNet
    return BasicBlock, ResNet


def build(width: int):
    """torchvision's ResNet18 with ``planes`` divided by ``width`` (1: the real resnet18)."""
    import torch

    BasicBlock, ResNet = _torchvision_resnet()

    class NarrowResNet(ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # the first stage: the stem's width
                self.inplanes = 64 // width
            return super()._make_layer(block, planes // width, blocks, stride, dilate)

    torch.manual_seed(SEED)
    model = NarrowResNet(BasicBlock, [2, 2, 2, 2], num_classes=N_CLASSES)
    if width != 1:
        model.conv1 = torch.nn.Conv2d(3, 64 // width, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = torch.nn.BatchNorm2d(64 // width)
        model.fc = torch.nn.Linear(512 // width, N_CLASSES)
    return model


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4, help="divide torchvision's channels by this (1: resnet18)")
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default=str(HERE / "torch_resnet18.onnx"))
    parser.add_argument("--expected", default=str(HERE / "torch_resnet18_expected.npz"))
    args = parser.parse_args()
    model = build(args.width)
    images, labels = make_images(size=args.size)
    x = torch.from_numpy(normalise(images))
    y = torch.from_numpy(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    order = torch.Generator().manual_seed(SEED)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x), generator=order).split(32):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        logits = model(x).numpy()
    torch.onnx.export(model, (x[:2],), args.out, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18, external_data=False)
    if args.expected and args.expected != "none":
        np.savez_compressed(args.expected, logits=logits.astype(np.float32),
                            predicted=logits.argmax(axis=1).astype(np.int64), labels=labels,
                            torch_version=np.array(torch.__version__))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {Path(args.out).stat().st_size / 1e6:.2f} MB, {n_params / 1e6:.2f} M parameters; "
          f"predicted classes {np.bincount(logits.argmax(axis=1), minlength=N_CLASSES).tolist()}, "
          f"training accuracy {(logits.argmax(axis=1) == labels).mean():.3f}")


if __name__ == "__main__":
    main()
