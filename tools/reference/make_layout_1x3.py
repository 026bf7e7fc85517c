"""Reference prompt ids for a 1×3-tile image (1008×336 px, no resize), through transformers'
Llama4Processor with the real tokenizer: fixtures/images/layout_1x3.json.
Run from the repo root: /work/refenv/bin/python tools/reference/make_layout_1x3.py
"""
import gzip
import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from transformers import AutoTokenizer
from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor
from transformers.models.llama4.processing_llama4 import Llama4Processor

ROOT = Path(__file__).resolve().parents[2]
TOK = ROOT / "fixtures" / "tokenizer"
CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]

tmp = Path(tempfile.mkdtemp())
with gzip.open(TOK / "tokenizer.json.gz", "rb") as src, open(tmp / "tokenizer.json", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.copyfile(TOK / "tokenizer_config.json", tmp / "tokenizer_config.json")
tok = AutoTokenizer.from_pretrained(tmp)
shutil.rmtree(tmp)
processor = Llama4Processor(image_processor=Llama4ImageProcessor(), tokenizer=tok)
image = Image.new("RGB", (1008, 336), (90, 120, 200))
text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
out = processor(text=text, images=[image], add_special_tokens=False)
ar = processor.image_processor(image, return_tensors="pt")["aspect_ratios"][0].tolist()
ids = out["input_ids"][0]
ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
assert ar == [1, 3], ar
(ROOT / "fixtures" / "images" / "layout_1x3.json").write_text(
    json.dumps({"image": "1008x336 RGB", "aspect_ratio": ar, "prompt_ids": ids}) + "\n"
)
print(len(ids), ar)
