"""A CMYK JPEG (Adobe-inverted, as Photoshop and PIL write them) and the RGB pixels PIL gives
for it (`Image.open(...).convert("RGB")`), for herd's CMYK decoding test.

Run: python tools/reference/make_cmyk_fixture.py   (needs pillow)
"""

import json
from pathlib import Path

from PIL import Image

out = Path(__file__).resolve().parents[2] / "fixtures" / "images"
w, h = 24, 16
img = Image.new("CMYK", (w, h))
img.putdata(
    [((x * 11) % 256, (y * 17) % 256, (x * y * 5) % 256, ((x + y) * 7) % 256) for y in range(h) for x in range(w)]
)
img.save(out / "cmyk.jpg", "JPEG", quality=90)
decoded = Image.open(out / "cmyk.jpg")
assert decoded.mode == "CMYK" and "adobe" in decoded.info
rgb = decoded.convert("RGB")
(out / "cmyk.rgb.json").write_text(
    json.dumps({"width": w, "height": h, "rgb": [v for p in rgb.get_flattened_data() for v in p]}) + "\n"
)
print("wrote", out / "cmyk.jpg")

# The same file without its Adobe APP14 segment: Pillow still reads a 4-channel JPEG as
# inverted CMYK ("CMYK;I", "assume adobe conventions"), whatever the markers say.
data = (out / "cmyk.jpg").read_bytes()
i = data.find(b"\xff\xee")
assert i > 0, "no APP14 segment"
seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
stripped = data[:i] + data[i + 2 + seg_len :]
(out / "cmyk-noadobe.jpg").write_bytes(stripped)
decoded = Image.open(out / "cmyk-noadobe.jpg")
assert decoded.mode == "CMYK" and "adobe" not in decoded.info
rgb = decoded.convert("RGB")
(out / "cmyk-noadobe.rgb.json").write_text(
    json.dumps({"width": w, "height": h, "rgb": [v for p in rgb.get_flattened_data() for v in p]}) + "\n"
)
print("wrote", out / "cmyk-noadobe.jpg")
