#!/usr/bin/env python3
"""Load benchmark for `herd serve`: N concurrent streaming clients, a fixed number of requests.

Starts `herd serve` on the model (or uses --url), then for each client count runs the requests
(random token-id prompts to /v1/completions, streamed, `ignore_eos` so every request makes
exactly --max-tokens tokens) and prints a table — requests/s, output tokens/s, time to first
token and inter-token latency p50/p90/p99, errors — the ratio of aggregate output throughput
at 8 clients (or the largest count) to 1 client, the server's RSS after the first 10 and after
--rss-requests requests, and one JSON line. Python standard library only.

    python3 bench/serve_load.py --model fixtures/chat-tiny --clients 1,8,32 --requests 64
    python3 bench/serve_load.py --model BENCH_DIR --clients 1,8 --requests 16 --max-tokens 32 \\
        --serve-args="--kv-dtype f16"
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Target:
    def __init__(self, url: str):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80

    def stream_completion(self, prompt: list[int], max_tokens: int, api_key: str | None) -> dict:
        """One streamed request: arrival-to-first-token and gaps between tokens, seconds."""
        body = json.dumps(
            {
                "prompt": prompt,
                "max_tokens": max_tokens,
                "stream": True,
                "logprobs": 0,  # one chunk per token, even mid-character
                "ignore_eos": True,
                "temperature": 0,
                "stream_options": {"include_usage": True},
            }
        )
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        start = time.perf_counter()
        conn.request("POST", "/v1/completions", body, headers)
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read().decode(errors="replace")
            conn.close()
            return {"error": f"HTTP {resp.status}: {text[:200]}"}
        times, tokens = [], 0
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                conn.close()
                return {"error": chunk["error"].get("message", "error")}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c.get("logprobs") and c["logprobs"].get("tokens"):
                    times.extend([time.perf_counter()] * len(c["logprobs"]["tokens"]))
        conn.close()
        if not times:
            return {"error": "no tokens"}
        return {
            "ttft": times[0] - start,
            "itl": [b - a for a, b in zip(times, times[1:])],
            "tokens": tokens or len(times),
            "end": times[-1],
        }


def run(target: Target, clients: int, requests: int, args, rng: random.Random) -> dict:
    prompts = [[rng.randrange(args.vocab_low, args.vocab_high) for _ in range(args.prompt_tokens)] for _ in range(requests)]
    results: list[dict] = []
    lock = threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= requests:
                    return
                next_i[0] += 1
            try:
                r = target.stream_completion(prompts[i], args.max_tokens, args.api_key)
            except Exception as e:  # noqa: BLE001 — counted as an error, the run goes on
                r = {"error": repr(e)}
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["ttft"] for r in ok]
    itl = [g for r in ok for g in r["itl"]]
    out_tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tokens_per_s": out_tokens / wall,
        "ttft_ms": [percentile(ttft, p) * 1e3 for p in (50, 90, 99)],
        "itl_ms": [percentile(itl, p) * 1e3 for p in (50, 90, 99)],
    }


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [args.herd, "serve", "--model", args.model, "--port", "0", "--max-running", str(max(args.clients))]
    cmd += shlex.split(args.serve_args)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    sys.exit(f"herd serve did not start: {' '.join(cmd)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder or GGUF (herd serve is started on it)")
    ap.add_argument("--url", help="an already running server instead of --model")
    ap.add_argument("--herd", default=str(ROOT / "target" / "release" / "herd"))
    ap.add_argument("--serve-args", default="", help="extra herd serve flags, one string")
    ap.add_argument("--clients", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--requests", type=int, default=64, help="requests per client count (at least the clients)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rss-requests", type=int, default=0, help="also run this many 1-client requests and report RSS after 10 and after them")
    ap.add_argument("--vocab-low", type=int, default=10)
    ap.add_argument("--vocab-high", type=int, default=256)
    ap.add_argument("--api-key")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.model and not args.url:
        ap.error("give --model (start a server) or --url")
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_server(args)
    target = Target(url)
    rng = random.Random(args.seed)
    try:
        # Warm-up: first-touch allocations and thread pools.
        run(target, 1, 2, args, rng)
        rows = [run(target, c, max(args.requests, c), args, rng) for c in args.clients]
        rss = {}
        if args.rss_requests and proc:
            run(target, 4, 10, args, rng)
            rss["after_10"] = rss_bytes(proc.pid)
            done = 10
            while done < args.rss_requests:
                n = min(200, args.rss_requests - done)
                run(target, 8, n, args, rng)
                done += n
            rss[f"after_{args.rss_requests}"] = rss_bytes(proc.pid)
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"{'clients':>7} {'reqs':>5} {'err':>4} {'req/s':>8} {'out tok/s':>10} {'TTFT p50/p90/p99 ms':>24} {'ITL p50/p90/p99 ms':>24}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>5} {r['errors']:>4} {r['requests_per_s']:>8.2f} {r['output_tokens_per_s']:>10.1f} "
            f"{'/'.join(f'{x:.0f}' for x in r['ttft_ms']):>24} {'/'.join(f'{x:.1f}' for x in r['itl_ms']):>24}"
        )
        if r["first_error"]:
            print(f"        first error: {r['first_error']}")
    one = next((r for r in rows if r["clients"] == 1), None)
    many = next((r for r in rows if r["clients"] == 8), rows[-1])
    ratio = many["output_tokens_per_s"] / one["output_tokens_per_s"] if one else None
    if ratio:
        print(f"aggregate output throughput, {many['clients']} clients / 1 client: {ratio:.2f}x")
    for k, v in rss.items():
        print(f"server RSS {k.replace('_', ' ')} requests: {v / 2**20:.1f} MiB" if v else f"server RSS {k}: n/a")
    print(
        json.dumps(
            {
                "bench": "serve_load",
                "model": args.model or args.url,
                "prompt_tokens": args.prompt_tokens,
                "max_tokens": args.max_tokens,
                "rows": rows,
                "throughput_ratio": ratio,
                "ratio_clients": many["clients"],
                "rss_bytes": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
