#!/usr/bin/env bash
# Builds fixtures/video/: tiny clips with known content for herd's video tests (ffmpeg 5.1,
# Debian bookworm's; libx264, libvpx-vp9). Run from the repository root:
#
#     bash tools/reference/make_video_clips.sh
#
# - segments.mp4 (H.264) / segments.webm (VP9) / segments.gif: 10 s, 64×48, 10 fps, four
#   solid colours of 2.5 s each — red, green, blue, white — so every moment's colour is known
#   and the scene changes are at 2.5, 5 and 7.5 s.
# - square.mp4: 4 s, 64×48, 10 fps, a white 16×16 square moving left to right on black
#   (x = 12 px a second), keyframe every 10 frames.
# - long.mp4: 10 hours, 16×16, one frame every 10 s, a keyframe every 10 frames — for the
#   bounded-work test (8 frames must not decode 3,600).
# - frames/: four PNGs (red, green, blue, white), a folder of frames.
# - wide.gif: 20000×2 pixels, wider than herd takes (an absurd-dimensions case).
set -euo pipefail
out=fixtures/video
rm -rf "$out"
mkdir -p "$out/frames"
common=(-hide_banner -loglevel error -y)
seg="color=c=red:s=64x48:r=10:d=2.5[a];color=c=green:s=64x48:r=10:d=2.5[b];color=c=blue:s=64x48:r=10:d=2.5[c];color=c=white:s=64x48:r=10:d=2.5[d];[a][b][c][d]concat=n=4:v=1:a=0"
ffmpeg "${common[@]}" -filter_complex "$seg" -c:v libx264 -pix_fmt yuv420p -g 25 -bf 0 -crf 30 "$out/segments.mp4"
ffmpeg "${common[@]}" -filter_complex "$seg" -c:v libvpx-vp9 -pix_fmt yuv420p -g 25 -b:v 20k "$out/segments.webm"
ffmpeg "${common[@]}" -filter_complex "$seg,split[x][y];[x]palettegen=max_colors=8[p];[y][p]paletteuse" -r 10 "$out/segments.gif"
ffmpeg "${common[@]}" -f lavfi -i "color=c=black:s=64x48:r=10:d=4" -f lavfi -i "color=c=white:s=16x16:r=10:d=4" \
    -filter_complex "[0][1]overlay=x='t*12':y=16" -c:v libx264 -pix_fmt yuv420p -g 10 -bf 0 -crf 30 "$out/square.mp4"
ffmpeg "${common[@]}" -f lavfi -i "color=c=gray:s=16x16:r=0.1:d=36000" -c:v libx264 -pix_fmt yuv420p -g 10 -bf 0 -crf 40 "$out/long.mp4"
ffmpeg "${common[@]}" -f lavfi -i "color=c=red:s=20000x2:r=1:d=2" "$out/wide.gif"
i=0
for c in red green blue white; do
    ffmpeg "${common[@]}" -f lavfi -i "color=c=$c:s=32x24:d=0.1" -frames:v 1 "$out/frames/$i-$c.png"
    i=$((i + 1))
done
ls -l "$out" "$out/frames"
