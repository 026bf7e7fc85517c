#!/usr/bin/env python3
"""Reference outputs of the resize transformers' Llama 4 processor uses, on random uint8 images
of awkward sizes: torchvision `resize(uint8 tensor, size, BILINEAR, antialias=True)` (on an
AVX2 CPU: ATen's fixed-point uint8 kernel). Writes fixtures/resize/cases.safetensors:
`in.K` [H, W, 3] and `out.K` [H', W', 3], uint8.

    /work/refenv/bin/python tools/reference/make_resize_cases.py   # needs torch + torchvision
"""

from pathlib import Path

import torch
import torchvision.transforms.v2.functional as tvF
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "resize" / "cases.safetensors"

# (in h, in w) → (out h, out w): 1×N and N×1, primes, ×7 up, ÷13 down, one axis only, the
# processor's own kind of step (40×30 → 48×36), mixed up/down.
CASES = [
    ((1, 17), (3, 5)),
    ((17, 1), (5, 3)),
    ((13, 11), (91, 77)),
    ((130, 117), (10, 9)),
    ((31, 29), (37, 23)),
    ((7, 5), (7, 12)),
    ((5, 7), (12, 7)),
    ((30, 40), (36, 48)),
    ((40, 30), (48, 36)),
    ((97, 89), (53, 101)),
    ((2, 3), (1, 2)),
    ((3, 5), (56, 34)),
    ((251, 3), (17, 2)),
]


def main() -> None:
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"), "the reference path needs AVX2"
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for k, ((h, w), (oh, ow)) in enumerate(CASES):
        img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        # Smooth regions too: a ramp in the first channel (rounding ties show there).
        img[0] = (torch.arange(h * w).reshape(h, w) * 7 % 256).to(torch.uint8)
        out = tvF.resize(img, [oh, ow], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
        same = torch.nn.functional.interpolate(img[None], size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)[0]
        assert torch.equal(out, same), "torchvision took another path than the native uint8 kernel"
        assert out.dtype == torch.uint8
        tensors[f"in.{k}"] = img.permute(1, 2, 0).contiguous()
        tensors[f"out.{k}"] = out.permute(1, 2, 0).contiguous()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT)
    print(f"wrote {len(CASES)} cases to {OUT}")


if __name__ == "__main__":
    main()
