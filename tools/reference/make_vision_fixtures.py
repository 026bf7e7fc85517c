#!/usr/bin/env python3
"""Build herd's Llama 4 vision reference fixtures with transformers (CPU, float32, eager attention).

Run from the repository root:

    /work/refenv/bin/python tools/reference/make_vision_fixtures.py              # both, ~1 min
    /work/refenv/bin/python tools/reference/make_vision_fixtures.py --only images
    /work/refenv/bin/python tools/reference/make_vision_fixtures.py --only vision-tiny

It writes (deleting and rewriting only these two folders):

* `fixtures/images/`: test images (pasta.jpeg and dog.jpg copied byte for byte from llama-models
  0.3.0, seven PNGs drawn here deterministically) and what transformers' Llama 4 image processor
  makes of them at the REAL settings (tile 336, max_patches 16): aspect ratios, tile counts,
  pixel values stored as uint8 grey levels (exact, see `pixel_lut`), and the expanded chat-prompt
  ids from Llama4Processor with the real tokenizer (fixtures/tokenizer/).
* `fixtures/vision-tiny/`: a tiny random-weight Llama4ForConditionalGeneration checkpoint in the
  published key layout (tile 56, patch 14, 4 tokens per tile after pixel shuffle), its
  preprocessor_config.json (tile 56, max_patches 4), and reference taps through the vision tower,
  the fused-prompt logits and a greedy continuation, all computed by hand because
  Llama4ForConditionalGeneration.forward is broken in transformers 5.24 (LLAMA4.md §9.11).

Everything is documented in tools/reference/VISION.md. The model code paths (weight init,
margins, reload with parameter cloning, router taps) are imported from make_fixtures.py.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import re
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL
import safetensors
import safetensors.torch
import tokenizers
import torch
import torch.nn.functional as F
import torchvision
import transformers
from PIL import Image, ImageDraw, features
from transformers import AutoImageProcessor, AutoTokenizer, DynamicCache
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.llama4.image_processing_llama4 import (
    Llama4ImageProcessor,
    get_best_fit,
    get_max_res_without_distortion,
)
from transformers.models.llama4.processing_llama4 import Llama4Processor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (also pins threads/determinism and silences transformers)

FIXTURE_VERSION = mf.FIXTURE_VERSION  # 1
GENERATOR = "tools/reference/make_vision_fixtures.py"
ROOT = mf.ROOT
IMAGES = ROOT / "fixtures" / "images"
TINY_DIR = ROOT / "fixtures" / "vision-tiny"
TOKENIZER_DIR = ROOT / "fixtures" / "tokenizer"
RESOURCES = Path(PIL.__file__).resolve().parents[1] / "llama_models" / "resources"

IMAGES_BUDGET = 10_000_000  # bytes, whole fixtures/images/
TINY_BUDGET = 2_000_000  # bytes, whole fixtures/vision-tiny/
MAX_PNG_BYTES = 300_000

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "torchvision": torchvision.__version__,
    "pillow": PIL.__version__,
    "libjpeg_turbo": features.version("libjpeg_turbo"),  # the JPEG decoder behind PIL (pasta, dog)
    "zlib": features.version("zlib"),
    "numpy": np.__version__,
    "tokenizers": tokenizers.__version__,
    # torch's uint8 antialiased bilinear resize has an AVX2 kernel (a port of Pillow-SIMD's
    # fixed-point resampler) and a generic one; they differ by 1 grey level on up to ~13% of the
    # resized pixels, so resized pixel values depend on this (see VISION.md).
    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
}
if VERSIONS["torch_cpu_capability"] not in ("AVX2", "AVX512"):
    print(f"WARNING: torch CPU capability {VERSIONS['torch_cpu_capability']}: resized pixels will differ from the committed fixtures (made with AVX2)")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


# ============================================================================================
# Part 1: test images
# ============================================================================================


def hash_noise(h: int, w: int, salt: int) -> np.ndarray:
    """Deterministic pseudo-random uint8 [h, w] from an integer hash (no RNG state involved)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.uint64)
    v = (x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ np.uint64(salt * 83492791)
    v = (v * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    v = v ^ (v >> np.uint64(15))
    v = (v * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    return ((v >> np.uint64(11)) & np.uint64(255)).astype(np.uint8)


def stripes(img: np.ndarray, y0: int, y1: int, x0: int, x1: int, vertical: bool):
    """1-pixel black/white stripes: the hardest case for an antialiased (down)scale."""
    y, x = np.mgrid[y0:y1, x0:x1]
    v = ((x if vertical else y) % 2 * 255).astype(np.uint8)
    img[y0:y1, x0:x1] = v[..., None] if img.ndim == 3 else v


def draw_wide() -> Image.Image:  # 1200 x 300 RGB
    h, w = 300, 1200
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x // 20 + y // 20) % 2) * 160 + 40], -1).astype(np.uint8)
    stripes(img, 20, 120, 900, 1000, vertical=True)
    stripes(img, 180, 280, 900, 1000, vertical=False)
    img[150:250, 50:150] = np.stack([hash_noise(100, 100, s) for s in (1, 2, 3)], -1)
    im = Image.frombytes("RGB", (w, h), img.tobytes())
    d = ImageDraw.Draw(im)
    d.ellipse((300, 40, 520, 260), fill=(250, 200, 20), outline=(0, 0, 0), width=5)
    d.rectangle((600, 60, 800, 240), outline=(255, 0, 255), width=3)
    d.polygon([(1050, 20), (1180, 150), (1050, 280), (1100, 150)], fill=(10, 220, 230))
    for i in range(0, 300, 15):
        d.line((0, i, 280, 299 - i), fill=(255, 255, 255), width=1)
    return im


def draw_tall() -> Image.Image:  # 300 x 1100 RGB
    h, w = 1100, 300
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 - y * 255 // (h - 1), ((x // 25) % 2) * 200 + 30, x * 255 // (w - 1)], -1).astype(np.uint8)
    stripes(img, 100, 200, 20, 280, vertical=False)
    stripes(img, 850, 1000, 100, 200, vertical=True)
    img[500:600, 100:200] = np.stack([hash_noise(100, 100, s) for s in (4, 5, 6)], -1)
    im = Image.frombytes("RGB", (w, h), img.tobytes())
    d = ImageDraw.Draw(im)
    d.ellipse((30, 250, 270, 450), fill=(200, 30, 60), outline=(255, 255, 0), width=4)
    d.rectangle((60, 650, 240, 800), fill=(0, 0, 0))
    d.polygon([(150, 1020), (290, 1090), (10, 1090)], fill=(255, 255, 255))
    return im


def draw_tiny() -> Image.Image:  # 40 x 30 RGB
    h, w = 30, 40
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 6, y * 8, hash_noise(h, w, 7)], -1).astype(np.uint8)
    img[10:20, 15:25] = (255, 255, 255)
    img[14:16, :] = (0, 0, 0)
    return Image.frombytes("RGB", (w, h), img.tobytes())


def draw_grey() -> Image.Image:  # 500 x 400, mode L
    h, w = 400, 500
    y, x = np.mgrid[0:h, 0:w]
    r = np.sqrt((x - 250.0) ** 2 + (y - 200.0) ** 2)
    img = np.clip(r * 255.0 / 320.0, 0, 255).astype(np.uint8)
    stripes(img, 20, 80, 20, 200, vertical=True)
    img[300:380, 400:480] = hash_noise(80, 80, 8)
    im = Image.frombytes("L", (w, h), img.tobytes())
    d = ImageDraw.Draw(im)
    d.ellipse((180, 130, 320, 270), outline=255, width=6)
    d.rectangle((30, 250, 150, 370), fill=0)
    return im


def draw_alpha() -> Image.Image:  # 400 x 400 RGBA with transparent and translucent areas
    h, w = 400, 400
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), 255 - y * 255 // (h - 1), hash_noise(h, w, 9) // 2 + 64], -1)
    a = np.full((h, w), 255)
    a[:120, :120] = 0  # fully transparent, but with colour underneath (must come out white)
    a[150:250, :] = x[150:250, :] * 255 // (w - 1)  # alpha ramp 0..255 across the width
    a[280:, 280:] = 0
    rgb[280:, 280:] = (255, 0, 0)  # transparent red: an RGBA->RGB that drops alpha shows red
    circle = (x - 300) ** 2 + (y - 60) ** 2 < 50**2
    a[circle] = 128
    img = np.concatenate([rgb, a[..., None]], -1).astype(np.uint8)
    return Image.frombytes("RGBA", (w, h), img.tobytes())


def draw_palette() -> Image.Image:  # 150 x 250, mode P (no transparency)
    h, w = 250, 150
    y, x = np.mgrid[0:h, 0:w]
    idx = ((x // 10 + 7 * (y // 10)) % 256).astype(np.uint8)
    idx[100:110, :] = 255
    idx[:, 70:73] = 0
    im = Image.frombytes("P", (w, h), idx.tobytes())
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 151) % 256)])
    return im


def draw_square316() -> Image.Image:  # 316 x 316 RGB: HF resizes it to 336 x 335 (float floor)
    h = w = 316
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) // 2) % 256], -1).astype(np.uint8)
    img[:, -1] = (255, 255, 255)  # last column white, so the 1-column black pad is visible
    return Image.frombytes("RGB", (w, h), img.tobytes())


# name -> (file, how it was made). JPEG photos are copied; PNGs are drawn.
IMAGE_SPECS = {
    "pasta": ("pasta.jpeg", "copy of llama-models 0.3.0 llama_models/resources/pasta.jpeg"),
    "dog": ("dog.jpg", "copy of llama-models 0.3.0 llama_models/resources/dog.jpg"),
    "wide": ("wide.png", draw_wide),
    "tall": ("tall.png", draw_tall),
    "tiny": ("tiny.png", draw_tiny),
    "grey": ("grey.png", draw_grey),
    "alpha": ("alpha.png", draw_alpha),
    "palette": ("palette.png", draw_palette),
    "square316": ("square316.png", draw_square316),
}
# Budget: full uint8 tiles of all nine images would be ~14 MB. The two JPEG photos (22 tiles)
# are stored every-3rd-row/column; their non-global tiles are unresized decoded JPEG pixels
# (the resize paths are covered in full by the PNGs).
STRIDE3 = {"pasta", "dog"}
STRIDE = 3

CHAT_ONE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
CHAT_TWO = [
    {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Describe."}]}
]
TWO_IMAGES = ["pasta", "dog"]


def write_images() -> dict:
    IMAGES.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (fname, how) in IMAGE_SPECS.items():
        path = IMAGES / fname
        if isinstance(how, str):
            src = RESOURCES / fname
            assert src.stat().st_size < 1_000_000, f"{src} is over 1 MB"
            shutil.copyfile(src, path)
            assert sha256(path) == sha256(src)
            source = how
        else:
            how().save(path, format="PNG", optimize=True)
            assert path.stat().st_size < MAX_PNG_BYTES, f"{path} is {path.stat().st_size} bytes"
            source = f"drawn by {GENERATOR}:{how.__name__}()"
        with Image.open(path) as im:
            info[name] = {
                "file": fname,
                "source": source,
                "bytes": path.stat().st_size,
                "sha256": sha256(path),
                "width": im.size[0],
                "height": im.size[1],
                "mode": im.mode,
            }
    return info


# ------------------------------------------------------------------------------------------
# Independent re-statement of LLAMA4.md §6 (canvas and resize target), checked against HF.


def exact_best_fit(h: int, w: int, tile: int, max_patches: int) -> tuple[int, int]:
    """(rows, cols) chosen by exact rational arithmetic (HF uses float32; equal on 23k sizes)."""
    cands = sorted({(r, n // r) for n in range(1, max_patches + 1) for r in range(1, n + 1) if n % r == 0})
    scale = {c: min(Fraction(c[0] * tile, h), Fraction(c[1] * tile, w)) for c in cands}
    up = [s for s in scale.values() if s >= 1]
    sel = min(up) if up else max(scale.values())
    return min((c for c in cands if scale[c] == sel), key=lambda c: c[0] * c[1])


def hf_resize_target(h: int, w: int, canvas: tuple[int, int], tile: int) -> tuple[int, int]:
    """The resize target exactly as HF computes it: Python float64 scale, then floor()."""
    th, tw = min(max(h, tile), canvas[0]), min(max(w, tile), canvas[1])
    sw, sh = tw / w, th / h
    if sw < sh:
        nh, nw = min(math.floor(h * sw), th), tw
    else:
        nh, nw = th, min(math.floor(w * sh), tw)
    return max(nh, 1), max(nw, 1)


def exact_resize_target(h: int, w: int, canvas: tuple[int, int], tile: int) -> tuple[int, int]:
    th, tw = min(max(h, tile), canvas[0]), min(max(w, tile), canvas[1])
    if Fraction(tw, w) < Fraction(th, h):
        return max(1, min(h * tw // w, th)), tw
    return th, max(1, min(w * th // h, tw))


def supported(tile: int, max_patches: int) -> torch.Tensor:
    from transformers.image_utils import SizeDict
    from transformers.models.llama4.image_processing_llama4 import find_supported_resolutions

    res = find_supported_resolutions(max_num_chunks=max_patches, patch_size=SizeDict(height=tile, width=tile))
    return torch.tensor(res)


def plan(h: int, w: int, tile: int, max_patches: int) -> dict:
    """Canvas / resize plan via HF's own functions, cross-checked with the restatement above."""
    canvas = tuple(int(v) for v in get_best_fit((h, w), supported(tile, max_patches)))
    rows, cols = canvas[0] // tile, canvas[1] // tile
    assert (rows, cols) == exact_best_fit(h, w, tile, max_patches)
    th, tw = min(max(h, tile), canvas[0]), min(max(w, tile), canvas[1])
    hf = get_max_res_without_distortion((h, w), (th, tw))
    resized = (max(hf[0], 1), max(hf[1], 1))
    assert resized == hf_resize_target(h, w, canvas, tile)
    return {
        "canvas": list(canvas),
        "aspect_ratio": [rows, cols],
        "resized": list(resized),
        "resized_exact_rational": list(exact_resize_target(h, w, canvas, tile)),
        "resize_happens": resized != (h, w),
        "tiles": rows * cols + (1 if rows * cols > 1 else 0),
    }


def plan_survey() -> dict:
    """How often HF's float floor() differs from the exact rational target (a pitfall)."""
    sizes = [(h, w) for h in range(1, 700, 3) for w in range(1, 700, 3)]
    out = {}
    for tile, mp in ((336, 16), (56, 4)):
        res = supported(tile, mp)
        n_fit = n_floor = 0
        examples = []
        for h, w in sizes:
            canvas = tuple(int(v) for v in get_best_fit((h, w), res))
            if (canvas[0] // tile, canvas[1] // tile) != exact_best_fit(h, w, tile, mp):
                n_fit += 1
            a, b = hf_resize_target(h, w, canvas, tile), exact_resize_target(h, w, canvas, tile)
            if a != b:
                n_floor += 1
                if len(examples) < 6:
                    examples.append({"hw": [h, w], "hf_resized": list(a), "exact_resized": list(b)})
        out[f"tile{tile}_max{mp}"] = {
            "sizes_checked": len(sizes),
            "canvas_disagreements_float32_vs_exact": n_fit,
            "resize_floor_disagreements": n_floor,
            "examples": examples,
        }
    return out


# ------------------------------------------------------------------------------------------
# Pixel values


def grey_lut(ip: Llama4ImageProcessor) -> torch.Tensor:
    """HF's normalised value for every grey level k: the processor's own rescale_and_normalize
    (bfloat16) applied to a uint8 ramp 0..255 in every channel. Returned as f32 [256]."""
    ramp = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    v = ip.rescale_and_normalize(ramp, True, ip.rescale_factor, True, ip.image_mean, ip.image_std)
    assert v.dtype == torch.bfloat16
    v = v.float()
    assert torch.equal(v[0, 0], v[0, 1]) and torch.equal(v[0, 0], v[0, 2])
    return v[0, 0].reshape(256).contiguous()


def to_grey_levels(pv: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """k = round((v*0.5 + 0.5)*255); asserts lut[k] reproduces every value bit for bit."""
    v = pv.float()
    k = torch.round((v * 0.5 + 0.5) * 255)
    assert k.min() >= 0 and k.max() <= 255
    k = k.to(torch.uint8)
    assert torch.equal(lut[k.long()], v), "uint8 grey-level round trip is not exact"
    return k


def alpha_composite_check() -> dict:
    """HF composites RGBA (and P/L with transparency) onto opaque white with PIL. Check that
    PIL's integer alpha_composite equals round((c*a + 255*(255-a)) / 255) for every (c, a)."""
    from transformers.image_transforms import convert_to_rgb

    lv = np.arange(256, dtype=np.int64)
    a, c = np.meshgrid(lv, lv, indexing="ij")
    rgba = np.stack([c, 255 - c, c, a], -1).astype(np.uint8)
    got = convert_to_rgb(Image.frombytes("RGBA", (256, 256), rgba.tobytes()), return_numpy=True).astype(np.int64)
    want = np.floor((c * a + 255 * (255 - a)) / 255 + 0.5).astype(np.int64)  # no ties: 255 is odd
    assert (got[..., 0] == want).all()
    assert (got[..., 1] == np.floor(((255 - c) * a + 255 * (255 - a)) / 255 + 0.5)).all()
    return {"pairs_checked": 65536, "formula": "out = round((c*a + 255*(255-a)) / 255) (PIL alpha_composite onto opaque white)"}


def check_tiles_against_source(name: str, im: Image.Image, k: torch.Tensor, p: dict, tile: int):
    """For images that need no resize: the tiles ARE the RGB pixels plus black padding."""
    rows, cols = p["aspect_ratio"]
    canvas = k[: rows * cols].reshape(rows, cols, 3, tile, tile).permute(2, 0, 3, 1, 4).reshape(3, rows * tile, cols * tile)
    nh, nw = p["resized"]
    assert not canvas[:, nh:, :].any() and not canvas[:, :, nw:].any(), f"{name}: pad != 0"
    if not p["resize_happens"]:
        from transformers.image_transforms import convert_to_rgb

        rgb = torch.from_numpy(convert_to_rgb(im, return_numpy=True)).permute(2, 0, 1)
        assert torch.equal(canvas[:, :nh, :nw], rgb), f"{name}: unresized tiles differ from the decoded pixels"
        return "tiles == decoded RGB + black pad (checked)"
    return "resized (torchvision antialiased bilinear on uint8)"


def make_images_fixture(image_info: dict) -> dict:
    print("\n=== images (tile 336, max_patches 16)")
    ip_cls = IMAGE_PROCESSOR_MAPPING_NAMES["llama4"]
    ip = Llama4ImageProcessor()
    assert ip_cls == {"torchvision": "Llama4ImageProcessor"}
    assert ip.size == {"height": 336, "width": 336} or dict(ip.size) == {"height": 336, "width": 336}
    assert ip.max_patches == 16 and ip.resize_to_max_canvas is False
    lut = grey_lut(ip)
    f32_formula = ((torch.arange(256, dtype=torch.float32) / 255 - 0.5) / 0.5)
    lut_vs_f32 = float((lut - f32_formula).abs().max())
    lut_vs_f32_bf16 = float((lut - f32_formula.to(torch.bfloat16).float()).abs().max())
    kk = torch.arange(256, dtype=torch.float32)
    closed = 2 * ((kk / 255).to(torch.bfloat16).float() - 0.5).to(torch.bfloat16).float()
    assert torch.equal(closed, lut), "closed form of the grey-level table"
    n_single = int((f32_formula.to(torch.bfloat16).float() != lut).sum())
    assert n_single == 128, n_single
    composite = alpha_composite_check()

    tok_dir = Path(tempfile.mkdtemp(prefix="llama4-tok-"))
    try:
        with gzip.open(TOKENIZER_DIR / "tokenizer.json.gz", "rb") as src, open(tok_dir / "tokenizer.json", "wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copyfile(TOKENIZER_DIR / "tokenizer_config.json", tok_dir / "tokenizer_config.json")
        tok = AutoTokenizer.from_pretrained(tok_dir)
    finally:
        shutil.rmtree(tok_dir)
    processor = Llama4Processor(image_processor=ip, tokenizer=tok)
    sp = {
        key: tok.convert_tokens_to_ids(t)
        for key, t in [
            ("bos", "<|begin_of_text|>"),
            ("image_start", "<|image_start|>"),
            ("image_end", "<|image_end|>"),
            ("tile_x", "<|tile_x_separator|>"),
            ("tile_y", "<|tile_y_separator|>"),
            ("image", "<|image|>"),
            ("patch", "<|patch|>"),
        ]
    }
    assert sp == {"bos": 200000, "image_start": 200080, "image_end": 200081, "tile_x": 200084, "tile_y": 200085, "image": 200090, "patch": 200092}, sp
    n_patch = (336 // 14) ** 2 // 4  # 144

    tensors = {"pixel_lut": lut}
    per_image = {}
    kept = {}  # grey levels of the two-image prompt's images, to check the batched call
    text_one = tok.apply_chat_template(CHAT_ONE, add_generation_prompt=True, tokenize=False)
    base_one = tok(text_one, add_special_tokens=False)["input_ids"]
    assert base_one.count(sp["image"]) == 1
    for name, meta in image_info.items():
        path = IMAGES / meta["file"]
        im = Image.open(path)
        im.load()
        out = ip(im, return_tensors="pt")
        pv, ar = out["pixel_values"], out["aspect_ratios"]
        p = plan(im.size[1], im.size[0], 336, 16)
        assert ar.tolist() == [p["aspect_ratio"]], (name, ar, p)
        assert pv.shape == (p["tiles"], 3, 336, 336) and pv.dtype == torch.bfloat16, (name, pv.shape, pv.dtype)
        k = to_grey_levels(pv, lut)
        if name in TWO_IMAGES:
            kept[name] = k
        content = check_tiles_against_source(name, im, k, p, 336)
        if name in STRIDE3:
            key, stored = f"{name}.pixels_stride3", k[:, :, ::STRIDE, ::STRIDE].contiguous()
        else:
            key, stored = f"{name}.pixels", k.contiguous()
        tensors[key] = stored
        tensors[f"{name}.aspect_ratio"] = torch.tensor(p["aspect_ratio"], dtype=torch.int64)

        # Prompt: the chat template renders one <|image|>, the processor expands it (§7).
        enc = processor(text=text_one, images=[im], add_special_tokens=False, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        layout = image_layout(p["aspect_ratio"], n_patch, sp)
        at = base_one.index(sp["image"])
        assert ids == base_one[:at] + layout + base_one[at + 1 :], f"{name}: processor layout differs from §7"
        n = p["aspect_ratio"][0] * p["aspect_ratio"][1]
        formula = 3 + n_patch * (n + 1) + n if n > 1 else 3 + n_patch
        assert len(layout) == formula
        assert sum(1 for t in ids if t == sp["patch"]) == n_patch * p["tiles"]
        tensors[f"{name}.prompt_ids"] = torch.tensor(ids, dtype=torch.int64)
        per_image[name] = {
            **meta,
            "mode_after_convert": "RGB",
            "alpha_composited_onto_white": meta["mode"] in ("RGBA", "LA", "PA") or "transparency" in im.info,
            **p,
            "pixels_key": key,
            "pixels_shape": list(stored.shape),
            "pixels_storage": (
                f"uint8 grey levels of every tile, rows and columns 0,3,...,333 only (= k[:, :, ::3, ::3])"
                if name in STRIDE3
                else "uint8 grey levels, every pixel of every tile"
            ),
            "tile_content": content,
            "layout_len": len(layout),
            "layout_start": at,
            "prompt_len": len(ids),
        }
        print(
            f"  {name:9s} {im.size[0]}x{im.size[1]} {im.mode:4s} canvas {p['canvas']} ar {p['aspect_ratio']} tiles {p['tiles']:2d} "
            f"resized {p['resized']}{' (exact ' + str(p['resized_exact_rational']) + ')' if p['resized'] != p['resized_exact_rational'] else ''} "
            f"layout {len(layout)} prompt {len(ids)} -> {key} {list(stored.shape)}"
        )
        im.close()

    text_two = tok.apply_chat_template(CHAT_TWO, add_generation_prompt=True, tokenize=False)
    base_two = tok(text_two, add_special_tokens=False)["input_ids"]
    imgs = [Image.open(IMAGES / image_info[n]["file"]) for n in TWO_IMAGES]
    enc = processor(text=text_two, images=imgs, add_special_tokens=False, return_tensors="pt")
    ids_two = enc["input_ids"][0].tolist()
    at = base_two.index(sp["image"])
    assert base_two[at + 1] == sp["image"]
    want = base_two[:at]
    for n in TWO_IMAGES:
        want += image_layout(per_image[n]["aspect_ratio"], n_patch, sp)
    want += base_two[at + 2 :]
    assert ids_two == want
    # The processor's pixel_values for the two-image call == the two single-image results.
    pv_two = enc["pixel_values"]
    assert torch.equal(to_grey_levels(pv_two, lut), torch.cat([kept[n] for n in TWO_IMAGES]))
    tensors["two.prompt_ids"] = torch.tensor(ids_two, dtype=torch.int64)
    print(f"  two images {TWO_IMAGES}: prompt {len(ids_two)} ids")

    survey = plan_survey()
    print(f"  canvas/resize survey: {json.dumps({k: {kk: vv for kk, vv in v.items() if kk != 'examples'} for k, v in survey.items()})}")

    st_path = IMAGES / "reference.safetensors"
    safetensors.torch.save_file(tensors, st_path, metadata={"format": "pt"})
    meta = {
        "fixture_version": FIXTURE_VERSION,
        "generator": GENERATOR,
        "versions": VERSIONS,
        "fixture": "images",
        "n_prompts": 0,
        "image_processor": {
            "auto_class": "Llama4ImageProcessor (AutoImageProcessor mapping for llama4: torchvision backend only)",
            "settings": {k: v for k, v in ip.to_dict().items() if not k.startswith("_")},
        },
        "pixel_encoding": {
            "stored": "uint8 k = round((v*0.5 + 0.5)*255), v = HF pixel_values (bfloat16)",
            "decode": "v = pixel_lut[k] (f32 [256], bit-exact). Closed form (checked): pixel_lut[k] = 2*bf16(bf16(k/255) - 0.5), bf16 = round to nearest even; the single rounding bf16(2k/255 - 1) differs in 128 of 256 entries",
            "round_trip_exact": True,
            "pixel_lut_vs_f32_formula_max_abs": lut_vs_f32,
            "pixel_lut_vs_bf16_of_f32_formula_max_abs": lut_vs_f32_bf16,
            "pad_grey_level": 0,
            "stride3": f"{sorted(STRIDE3)}: k[:, :, ::3, ::3] (rows/cols 0,3,...,333 of every tile incl. the global tile)",
        },
        "alpha_composite": composite,
        "special_ids": sp,
        "patch_tokens_per_tile": n_patch,
        "chat_one": {"messages": CHAT_ONE, "add_generation_prompt": True, "text": text_one, "ids_without_image": base_one},
        "chat_two": {
            "messages": CHAT_TWO,
            "add_generation_prompt": True,
            "images": TWO_IMAGES,
            "text": text_two,
            "prompt_len": len(ids_two),
            "layout_starts": [at, at + per_image[TWO_IMAGES[0]]["layout_len"]],
        },
        "processor_call": "Llama4Processor(image_processor, tokenizer)(text=rendered_chat, images=[...], add_special_tokens=False)",
        "layout_formula": "n = rows*cols > 1: 3 + 144*(n+1) + n; n = 1: 3 + 144",
        "images": per_image,
        "resize_survey": survey,
    }
    (IMAGES / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = dir_bytes(IMAGES)
    print(f"  fixtures/images: {total} bytes")
    assert total < IMAGES_BUDGET, f"fixtures/images is {total} bytes"
    return meta


def image_layout(ar, n_patch: int, sp: dict) -> list[int]:
    """LLAMA4.md §7."""
    rows, cols = ar
    out = [sp["image_start"]]
    if rows * cols > 1:
        for _ in range(rows):
            for c in range(cols):
                out += [sp["patch"]] * n_patch
                if c < cols - 1:
                    out.append(sp["tile_x"])
            out.append(sp["tile_y"])
    out += [sp["image"]] + [sp["patch"]] * n_patch + [sp["image_end"]]
    return out


# ============================================================================================
# Part 2: vision-tiny
# ============================================================================================

TILE, MAX_PATCHES = 56, 4
GREEDY = 8
TINY_IMAGES = ["dog", "wide"]  # files from fixtures/images/
TEXT_SEGMENTS = (3, 5, 4)  # text tokens before image 0, between, after image 1

# Stand-in ids at the top of the 320-token vocab, in the real ids' relative order.
TINY_SP = {
    "image_start": 314,  # <|image_start|>      (real 200080) = boi_token_index
    "image_end": 315,  # <|image_end|>          (real 200081) = eoi_token_index
    "tile_x": 316,  # <|tile_x_separator|>      (real 200084)
    "tile_y": 317,  # <|tile_y_separator|>      (real 200085)
    "image": 318,  # <|image|>                  (real 200090)
    "patch": 319,  # <|patch|>                  (real 200092) = image_token_index
}
TINY_TOKEN_TEXT = {
    "image_start": "<|image_start|>",
    "image_end": "<|image_end|>",
    "tile_x": "<|tile_x_separator|>",
    "tile_y": "<|tile_y_separator|>",
    "image": "<|image|>",
    "patch": "<|patch|>",
}

TINY_SPEC = {
    "name": "vision-tiny",
    "kind": "multimodal",
    "dtype": torch.float32,
    "prompt_seed": 1006,
    "boi": TINY_SP["image_start"],
    "eoi": TINY_SP["image_end"],
    "image_marker": TINY_SP["image"],
    "image_token": TINY_SP["patch"],
    "text": dict(
        mf.TINY,
        vocab_size=320,
        num_hidden_layers=4,  # NoPE at 3
        intermediate_size=32,
        intermediate_size_mlp=96,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        use_qk_norm=True,
        attention_chunk_size=8,
        no_rope_layer_interval=4,
        attn_temperature_tuning=True,
        floor_scale=4,
        attn_scale=0.1,
        rope_parameters=mf.SCOUT_ROPE,
        eos_token_id=[2, 3],
        pad_token_id=0,
    ),
    # 56x56 tile / patch 14 -> 4x4 = 16 patches -> pixel shuffle 0.5 -> 2x2 = 4 tokens of width
    # 32/0.5^2 = 128 = intermediate_size (HF's adapter fc1 input width, LLAMA4.md §9.6).
    "vision": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 8: 4 rope pairs, 2 for x and 2 for y
        intermediate_size=128,
        image_size=TILE,
        patch_size=14,
        num_channels=3,
        pixel_shuffle_ratio=0.5,
        projector_input_dim=64,
        projector_output_dim=64,
        vision_output_dim=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
}


def tiny_suppressed() -> list[int]:
    return sorted(set(mf.special_ids(TINY_SPEC)) | set(TINY_SP.values()))


def build_tiny(seed: int):
    model = mf.build_model(TINY_SPEC, seed)  # make_fixtures' init: std 0.15, router 0.3, gains 1+N(0,.1), biases N(0,.1)
    with torch.no_grad():  # make_fixtures shrinks 0-3, boi, eoi, <|image|>, <|patch|>; add the separators
        for i in (TINY_SP["tile_x"], TINY_SP["tile_y"]):
            model.language_model.lm_head.weight[i] *= 0.01
    return model


def tiny_prompt(layouts: list[list[int]]) -> torch.Tensor:
    vocab = TINY_SPEC["text"]["vocab_size"]
    allowed = [i for i in range(4, vocab) if i not in tiny_suppressed()]
    g = torch.Generator().manual_seed(TINY_SPEC["prompt_seed"])
    text = [allowed[j] for j in torch.randint(len(allowed), (sum(TEXT_SEGMENTS),), generator=g)]
    a, b, _ = TEXT_SEGMENTS
    ids = [TINY_SPEC["text"]["bos_token_id"]] + text[:a] + layouts[0] + text[a : a + b] + layouts[1] + text[a + b :]
    return torch.tensor(ids, dtype=torch.int64)


class VisionTaps:
    """Forward hooks on the vision tower's submodules (see VISION.md for what each is)."""

    def __init__(self, model):
        vm = model.vision_model
        self.out = {}
        self.handles = [
            vm.layernorm_pre.register_forward_pre_hook(self._pre("patch_embeds")),
            vm.layernorm_pre.register_forward_hook(self._post("encoder_in")),
            vm.layernorm_post.register_forward_hook(self._post("post_ln")),
            vm.vision_adapter.mlp.register_forward_pre_hook(self._pre("shuffled")),
            vm.vision_adapter.register_forward_hook(self._post("adapter_out")),
            model.multi_modal_projector.register_forward_hook(self._post("projected")),
        ]
        for j, layer in enumerate(vm.model.layers):
            self.handles.append(layer.register_forward_hook(self._post(f"layer_out.{j}")))

    def _pre(self, key):
        def hook(_m, args):
            self.out[key] = args[0].detach().clone()

        return hook

    def _post(self, key):
        def hook(_m, _args, output):
            o = output[0] if isinstance(output, tuple) else output
            self.out[key] = o.detach().clone()

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def vision_features(model, pixels: torch.Tensor) -> dict:
    taps = VisionTaps(model)
    try:
        feats = model.vision_model(pixels).last_hidden_state  # [tiles, 4, 64]
        proj = model.multi_modal_projector(feats.reshape(-1, feats.shape[-1]))  # [tiles*4, 64]
    finally:
        taps.close()
    t = taps.out
    n = pixels.shape[0]
    out = {
        "patch_embeds": t["patch_embeds"].reshape(n, 17, 32),  # module sees [tiles, 1, 17, 32]
        "encoder_in": t["encoder_in"].reshape(n, 17, 32),
        **{f"layer_out.{j}": t[f"layer_out.{j}"] for j in range(2)},
        "encoder_out": t["post_ln"][:, :-1, :],
        "shuffled": t["shuffled"],
        "adapter_out": t["adapter_out"],
        "projected": t["projected"],
    }
    assert torch.equal(out["adapter_out"], feats) and torch.equal(out["projected"], proj)
    return {k: v.float().contiguous() for k, v in out.items()}


@torch.no_grad()
def doc_vision(model, pixels: torch.Tensor) -> dict:
    """LLAMA4.md §4 restated from the weights only (no HF vision code), to check the document."""
    sd = {k: v.float() for k, v in model.state_dict().items()}
    vc = model.config.vision_config
    n, ps, hid, nh = pixels.shape[0], vc.patch_size, vc.hidden_size, vc.num_attention_heads
    g = vc.image_size // ps
    d = hid // nh
    # 1. patches row-major, each flattened (c, ky, kx)
    x = pixels.reshape(n, 3, g, ps, g, ps).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * ps * ps)
    h = x @ sd["vision_model.patch_embedding.linear.weight"].T
    # 2. CLS appended last, positional embedding (row g*g = CLS)
    h = torch.cat([h, sd["vision_model.class_embedding"].expand(n, 1, hid)], 1) + sd["vision_model.positional_embedding_vlm"]
    taps = {"patch_embeds": h}

    def ln(z, pre):
        return F.layer_norm(z, (hid,), sd[pre + ".weight"], sd[pre + ".bias"], eps=1e-5)

    h = ln(h, "vision_model.layernorm_pre")
    taps["encoder_in"] = h
    # 2-D rope: pair m < q/2 -> (x+1) f_m, m >= q/2 -> (y+1) f_{m-q/2}; CLS angle 0
    q = d // 2
    f = torch.tensor([vc.rope_parameters["rope_theta"] ** (-2 * k / q) for k in range(q // 2)], dtype=torch.float32)
    ang = torch.zeros(g * g + 1, q)
    for p in range(g * g):
        yy, xx = divmod(p, g)
        ang[p, : q // 2] = (xx + 1) * f
        ang[p, q // 2 :] = (yy + 1) * f
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]

    def rope(t):  # t [n, T, nh, d], interleaved pairs
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    for j in range(vc.num_hidden_layers):
        pre = f"vision_model.model.layers.{j}."
        z = ln(h, pre + "input_layernorm")
        qkv = [
            (z @ sd[pre + f"self_attn.{w}_proj.weight"].T + sd[pre + f"self_attn.{w}_proj.bias"]).reshape(n, -1, nh, d)
            for w in "qkv"
        ]
        qq, kk, vv = rope(qkv[0]), rope(qkv[1]), qkv[2]
        s = torch.einsum("nihd,njhd->nhij", qq, kk) / math.sqrt(d)
        o = torch.einsum("nhij,njhd->nihd", s.softmax(-1), vv).reshape(n, -1, hid)
        h = h + o @ sd[pre + "self_attn.o_proj.weight"].T + sd[pre + "self_attn.o_proj.bias"]
        z = ln(h, pre + "post_attention_layernorm")
        z = F.gelu(z @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
        h = h + z @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
        taps[f"layer_out.{j}"] = h
    h = ln(h, "vision_model.layernorm_post")[:, :-1]
    taps["encoder_out"] = h
    # pixel shuffle: token (I, J) = concat of (2I,2J), (2I,2J+1), (2I+1,2J), (2I+1,2J+1)
    gg = h.reshape(n, g, g, hid)
    sh = torch.cat([gg[:, 0::2, 0::2], gg[:, 0::2, 1::2], gg[:, 1::2, 0::2], gg[:, 1::2, 1::2]], -1)
    sh = sh.reshape(n, (g // 2) ** 2, 4 * hid)
    taps["shuffled"] = sh
    a = F.gelu(F.gelu(sh @ sd["vision_model.vision_adapter.mlp.fc1.weight"].T) @ sd["vision_model.vision_adapter.mlp.fc2.weight"].T)
    taps["adapter_out"] = a
    taps["projected"] = a.reshape(-1, a.shape[-1]) @ sd["multi_modal_projector.linear_1.weight"].T
    return taps


@torch.no_grad()
def fused_embeds(model, ids: torch.Tensor, projected: list[torch.Tensor]) -> torch.Tensor:
    emb = model.language_model.model.embed_tokens(ids[None]).clone()
    rows = ids == TINY_SP["patch"]
    allp = torch.cat(projected)
    assert int(rows.sum()) == allp.shape[0]
    emb[0, rows] = allp  # in order: image 0's tiles (row-major, then global), then image 1's
    return emb


@torch.no_grad()
def tiny_reference(model, pixels: list[torch.Tensor], ids: torch.Tensor) -> tuple[dict, dict]:
    lm = model.language_model
    tensors, stats = {}, {}
    feats = [vision_features(model, pv) for pv in pixels]
    for k, (pv, fe) in enumerate(zip(pixels, feats)):
        tensors[f"img.{k}.pixel_values"] = pv.float().contiguous()
        for name, v in fe.items():
            tensors[f"img.{k}.{name}"] = v
    emb = fused_embeds(model, ids, [fe["projected"] for fe in feats])
    tap = mf.RouterTap(lm)
    try:
        logits = lm(inputs_embeds=emb, use_cache=False).logits[0].float()
        # Greedy: prefill the fused embeddings into a fresh cache, then decode token ids.
        cache = DynamicCache(config=lm.config)
        out = lm(inputs_embeds=emb, cache=cache, use_cache=True)
        cache, last = out.cache, out.logits[0, -1].float()
        toks, rows = [], []
        for s in range(GREEDY):
            tok = int(last.argmax())
            toks.append(tok)
            rows.append(last)
            if s + 1 == GREEDY:
                break
            out = lm(
                input_ids=torch.tensor([[tok]]),
                position_ids=torch.tensor([[len(ids) + s]]),
                cache=cache,
                use_cache=True,
            )
            cache, last = out.cache, out.logits[0, -1].float()
        glog = torch.stack(rows)
        toks = torch.tensor(toks, dtype=torch.int64)
        # Cache-free check: one full pass over the fused prompt + the greedy tokens.
        ext_emb = torch.cat([emb, lm.model.embed_tokens(toks[None])], 1)
        ext = lm(inputs_embeds=ext_emb, use_cache=False).logits[0].float()
        stats["min_router_gap"] = tap.min_gap()
    finally:
        tap.close()
    stats["greedy_vs_full"] = float((glog - ext[len(ids) - 1 : -1]).abs().max())
    stats["prompt_vs_ext"] = float((logits - ext[: len(ids)]).abs().max())
    stats["min_greedy_gap"] = mf.top2_gap(glog)
    stats["min_full_gap"] = min(mf.top2_gap(logits), mf.top2_gap(ext))
    tensors["prompt.ids"] = ids.contiguous()
    tensors["prompt.embeds"] = emb[0].float().contiguous()
    tensors["prompt.logits"] = logits.contiguous()
    tensors["prompt.greedy"] = toks.contiguous()
    tensors["prompt.greedy_logits"] = glog.contiguous()
    return tensors, stats


def tiny_margins_ok(stats: dict) -> bool:
    return (
        stats["min_greedy_gap"] >= mf.MIN_LOGIT_GAP
        and stats["min_full_gap"] >= mf.MIN_LOGIT_GAP
        and stats["min_router_gap"] >= mf.MIN_ROUTER_GAP
    )


def layout_from_processor(ar, n_patch: int) -> list[int]:
    """Llama4Processor._prompt_split_image's string, mapped onto the stand-in ids."""
    proc = Llama4Processor.__new__(Llama4Processor)  # the method only uses its arguments
    s = Llama4Processor._prompt_split_image(proc, ar, n_patch)
    inv = {TINY_TOKEN_TEXT[k]: v for k, v in TINY_SP.items()}
    toks = re.findall(r"<\|[a-z_]+\|>", s)
    assert "".join(toks) == s
    return [inv[t] for t in toks]


@torch.no_grad()
def sanity_tiny(model, pixels, ids, tensors) -> dict:
    out = {}
    # 1. LLAMA4.md §4 restated vs HF's vision tower.
    worst = {}
    for k, pv in enumerate(pixels):
        doc = doc_vision(model, pv.float())
        for name, v in doc.items():
            ref = tensors[f"img.{k}.{name}"]
            assert v.shape == ref.shape, (name, v.shape, ref.shape)
            worst[name] = max(worst.get(name, 0.0), float((v - ref).abs().max()))
    print(f"  LLAMA4.md §4 restated vs HF vision taps, max|Δ|: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    assert max(worst.values()) < 1e-4
    out["doc_vision_vs_hf_max_abs"] = worst
    # 2. Tiles are independent batch items.
    pv = pixels[0].float()
    one = torch.cat([model.vision_model(pv[i : i + 1]).last_hidden_state for i in range(pv.shape[0])])
    d = float((one - model.vision_model(pv).last_hidden_state).abs().max())
    print(f"  vision tower tile by tile vs batched: max|Δ| {d:.1e}")
    assert d < 1e-5
    out["tile_by_tile_vs_batched"] = d
    # 3. HF's own fusion helpers (as used in the 5.24 forward) give the same embeddings.
    emb = model.get_input_embeddings()(ids[None])
    feats = torch.cat([model.get_image_features(pixel_values=p.float(), return_dict=True).last_hidden_state for p in pixels])
    flat = model.multi_modal_projector(feats.reshape(-1, feats.shape[-1]))
    mask = model.get_placeholder_mask(ids[None], inputs_embeds=emb, image_features=flat)
    hf_emb = emb.masked_scatter(mask, flat)
    assert torch.equal(hf_emb[0], tensors["prompt.embeds"]), "masked_scatter fusion differs from the by-hand scatter"
    print("  get_image_features + projector + get_placeholder_mask + masked_scatter == by-hand embeds (bit for bit)")
    # 4. The images change the logits (and their order matters).
    lm = model.language_model
    base = tensors["prompt.logits"]
    plain = lm(input_ids=ids[None], use_cache=False).logits[0]
    swapped = lm(inputs_embeds=fused_embeds(model, ids, [tensors["img.1.projected"], tensors["img.0.projected"]]), use_cache=False).logits[0]
    first = int((ids == TINY_SP["patch"]).nonzero()[0])
    d_plain = float((plain - base)[first:].abs().max())
    d_swap = float((swapped - base)[first:].abs().max())
    d_before = float((plain - base)[:first].abs().max())
    print(f"  logits without image features: max|Δ| {d_plain:.2f} (0 before the first <|patch|>: {d_before:.1e}); images swapped: {d_swap:.2f}")
    assert d_before == 0 and d_plain > 0.1 and d_swap > 0.1
    out["no_image_features_max_abs"] = d_plain
    out["images_swapped_max_abs"] = d_swap
    # 5. What float32 normalisation (instead of HF's bfloat16) would change downstream.
    f32_pixels = [((torch.round((p * 0.5 + 0.5) * 255) / 255) - 0.5) / 0.5 for p in pixels]
    alt, _ = tiny_reference(model, f32_pixels, ids)
    eff = {
        "pixel_values_max_abs": max(float((a - b).abs().max()) for a, b in zip(f32_pixels, pixels)),
        "projected_max_abs": max(float((alt[f"img.{k}.projected"] - tensors[f"img.{k}.projected"]).abs().max()) for k in range(len(pixels))),
        "logits_max_abs": float((alt["prompt.logits"] - tensors["prompt.logits"]).abs().max()),
        "greedy_same": bool(torch.equal(alt["prompt.greedy"], tensors["prompt.greedy"])),
    }
    print(f"  f32 instead of bf16 normalisation: {eff}")
    out["f32_normalisation_effect"] = eff
    # 6. The official forward (LLAMA4.md §9.11).
    try:
        model(input_ids=ids[None], pixel_values=torch.cat(pixels).float(), use_cache=False)
        msg = "works"
    except Exception as e:  # noqa: BLE001 - only reported
        msg = f"{type(e).__name__}: {e}"
    print(f"  official Llama4ForConditionalGeneration.forward: {msg}")
    out["official_forward"] = msg
    return out


def make_tiny_fixture() -> dict:
    print(f"\n=== vision-tiny (tile {TILE}, max_patches {MAX_PATCHES})")
    ip = Llama4ImageProcessor(size={"height": TILE, "width": TILE}, max_patches=MAX_PATCHES)
    n_patch = (TILE // 14) ** 2 // 4  # 4
    pixels, ars, img_meta, layouts = [], [], [], []
    for name in TINY_IMAGES:
        fname = IMAGE_SPECS[name][0]
        with Image.open(IMAGES / fname) as im:
            out = ip(im, return_tensors="pt")
            p = plan(im.size[1], im.size[0], TILE, MAX_PATCHES)
            size, mode = im.size, im.mode
        pv, ar = out["pixel_values"], out["aspect_ratios"][0].tolist()
        assert ar == p["aspect_ratio"] and pv.shape[0] == p["tiles"]
        pixels.append(pv.float())  # bf16 -> f32 is exact
        ars.append(ar)
        lay = image_layout(ar, n_patch, TINY_SP)
        assert lay == layout_from_processor(ar, n_patch)
        n = ar[0] * ar[1]
        assert len(lay) == (3 + n_patch * (n + 1) + n if n > 1 else 3 + n_patch)
        layouts.append(lay)
        img_meta.append({"file": f"fixtures/images/{fname}", "width": size[0], "height": size[1], "mode": mode, **p, "layout_len": len(lay)})
        print(f"  img {len(img_meta) - 1} {fname}: {size[0]}x{size[1]} canvas {p['canvas']} ar {ar} tiles {p['tiles']} resized {p['resized']} layout {len(lay)}")
    ids = tiny_prompt(layouts)
    print(f"  prompt: {len(ids)} ids")

    seed = None
    for s in range(mf.MAX_SEED_TRIES):
        _, st = tiny_reference(build_tiny(s), pixels, ids)
        ok = tiny_margins_ok(st)
        print(f"  seed {s}: greedy gap {st['min_greedy_gap']:.2e}, full gap {st['min_full_gap']:.2e}, router gap {st['min_router_gap']:.2e}" + ("  <- ok" if ok else ""))
        if ok:
            seed = s
            break
    assert seed is not None, "no seed meets the margins"
    candidate, _ = tiny_reference(build_tiny(seed), pixels, ids)

    if TINY_DIR.exists():
        shutil.rmtree(TINY_DIR)
    model = build_tiny(seed)
    model.save_pretrained(TINY_DIR)
    ip.save_pretrained(TINY_DIR)
    model = mf.reload(TINY_SPEC, TINY_DIR)
    assert model.config.vision_config._attn_implementation == "eager", model.config.vision_config._attn_implementation
    # The saved preprocessor config reproduces the pixels.
    ip2 = AutoImageProcessor.from_pretrained(TINY_DIR)
    assert type(ip2) is Llama4ImageProcessor and ip2.max_patches == MAX_PATCHES
    for name, pv in zip(TINY_IMAGES, pixels):
        with Image.open(IMAGES / IMAGE_SPECS[name][0]) as im:
            assert torch.equal(ip2(im, return_tensors="pt")["pixel_values"].float(), pv)
    tensors, stats = tiny_reference(model, pixels, ids)
    for k, v in candidate.items():
        assert torch.equal(v, tensors[k]), f"{k} changed after save/reload"
    print("  reference from the reloaded checkpoint == in-memory candidate, bit for bit")
    assert tiny_margins_ok(stats), stats
    assert stats["greedy_vs_full"] < 1e-4 and stats["prompt_vs_ext"] < 1e-4, stats
    print(f"  max|greedy(cache) - full| {stats['greedy_vs_full']:.1e}, max|prompt - extended full pass| {stats['prompt_vs_ext']:.1e}")
    for k, ar in enumerate(ars):
        tensors[f"img.{k}.aspect_ratio"] = torch.tensor(ar, dtype=torch.int64)
    sanity = sanity_tiny(model, pixels, ids, tensors)

    safetensors.torch.save_file(tensors, TINY_DIR / "reference.safetensors", metadata={"format": "pt"})
    ids_l = ids.tolist()
    a, b, c = TEXT_SEGMENTS
    start0 = 1 + a
    start1 = start0 + len(layouts[0]) + b
    meta = {
        "fixture_version": FIXTURE_VERSION,
        "generator": GENERATOR,
        "versions": VERSIONS,
        "fixture": "vision-tiny",
        "weights_dtype": "float32",
        "n_prompts": 0,
        "greedy_tokens": GREEDY,
        "min_greedy_gap": stats["min_greedy_gap"],
        "min_full_pass_gap": stats["min_full_gap"],
        "min_router_gap": stats["min_router_gap"],
        "max_greedy_vs_full": stats["greedy_vs_full"],
        "weights_seed": seed,
        "special_ids": {TINY_TOKEN_TEXT[k]: v for k, v in TINY_SP.items()},
        "bos_token_id": TINY_SPEC["text"]["bos_token_id"],
        "suppressed_lm_head_ids": tiny_suppressed(),
        "tile_size": TILE,
        "max_patches": MAX_PATCHES,
        "patch_tokens_per_tile": n_patch,
        "images": img_meta,
        "prompt": {
            "len": len(ids_l),
            "layout": "bos, 3 text, image 0 layout, 5 text, image 1 layout, 4 text",
            "image_layout_starts": [start0, start1],
            "image_layout_lens": [len(x) for x in layouts],
            "patch_rows": int((ids == TINY_SP["patch"]).sum()),
        },
        "taps": {
            "patch_embeds": "input of vision_model.layernorm_pre (forward pre-hook): patch_embedding(unfold) + class_embedding appended last + positional_embedding_vlm; [tiles, 17, 32]",
            "encoder_in": "output of vision_model.layernorm_pre; [tiles, 17, 32]",
            "layer_out.{j}": "output of vision_model.model.layers[j] (residual stream); [tiles, 17, 32]",
            "encoder_out": "output of vision_model.layernorm_post with the last (CLS) token dropped; [tiles, 16, 32]",
            "shuffled": "input of vision_model.vision_adapter.mlp (pixel_shuffle output); [tiles, 4, 128]",
            "adapter_out": "output of vision_model.vision_adapter (= vision_model(...).last_hidden_state); [tiles, 4, 64]",
            "projected": "multi_modal_projector(adapter_out.reshape(-1, 64)); [tiles*4, 64]",
        },
        "sanity": sanity,
    }
    (TINY_DIR / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = dir_bytes(TINY_DIR)
    print(f"  fixtures/vision-tiny: {total} bytes: " + ", ".join(f"{f.name} {f.stat().st_size}" for f in sorted(TINY_DIR.iterdir())))
    assert total < TINY_BUDGET
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["images", "vision-tiny"])
    args = ap.parse_args()
    t0 = time.time()
    if args.only in (None, "images"):
        if IMAGES.exists():
            shutil.rmtree(IMAGES)
        info = write_images()
        make_images_fixture(info)
    if args.only in (None, "vision-tiny"):
        for name in TINY_IMAGES:
            assert (IMAGES / IMAGE_SPECS[name][0]).exists(), "run with --only images first"
        make_tiny_fixture()
    print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
