"""herd serve against the official OpenAI Python client (pinned in requirements.txt).

Each test class starts its own `herd serve` on a free port over a tiny checkpoint in fixtures/
and talks to it only through `openai.OpenAI`, as users' code does. Run with tests/e2e/run.sh.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import math
import os
import re
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[2]
HERD = os.environ.get("HERD_BIN", str(ROOT / "target" / "debug" / "herd"))
CHAT_TINY = ROOT / "fixtures" / "chat-tiny"
VISION_CHAT_TINY = ROOT / "fixtures" / "vision-chat-tiny"
GUARD_CHAT_TINY = ROOT / "fixtures" / "guard-chat-tiny"


class Server:
    """A `herd serve` process on a free port; its address is read from its stderr."""

    def __init__(self, model: Path, *extra: str, env: dict | None = None):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [HERD, "serve", "--model", str(model), "--port", "0", *extra],
            stderr=subprocess.PIPE,
            stdout=self.log,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.time() + 120
        self.url = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError("herd serve did not start:\n" + "".join(self.lines))
        # Keep draining stderr so the server never blocks on a full pipe.
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def client(self, api_key: str = "unused", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120, **kw)

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.drain.join(timeout=10)
        self.proc.stderr.close()
        self.log.close()


def herd_logits(model: Path, ids: list[int]) -> list[list[float]]:
    """`herd logits` for `ids`: [T][V] read from its safetensors output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.safetensors"
        subprocess.run(
            [HERD, "logits", "--model", str(model), "--tokens", ",".join(map(str, ids)), "--out", str(out)],
            check=True,
            capture_output=True,
        )
        data = out.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    info = header["logits"]
    assert info["dtype"] == "F32", info
    rows, cols = info["shape"]
    start, end = info["data_offsets"]
    values = struct.unpack(f"<{rows * cols}f", data[8 + n + start : 8 + n + end])
    return [list(values[r * cols : (r + 1) * cols]) for r in range(rows)]


def log_softmax_at(row: list[float], i: int) -> float:
    m = max(row)
    return row[i] - m - math.log(sum(math.exp(x - m) for x in row))


class ChatTiny(unittest.TestCase):
    server: Server

    @classmethod
    def setUpClass(cls):
        cls.server = Server(CHAT_TINY, "--max-running", "16")
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def chat(self, **kw):
        args = dict(model="chat-tiny", messages=[{"role": "user", "content": "Hello! Who are you?"}], max_tokens=12)
        args.update(kw)
        return self.client.chat.completions.create(**args)

    def test_models_and_health(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["chat-tiny"])
        self.assertEqual(self.server.get_json("/health")["status"], "ok")

    def test_chat(self):
        r = self.chat(temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIsInstance(r.choices[0].message.content, str)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertGreater(r.usage.completion_tokens, 0)
        # Greedy twice: the same text.
        self.assertEqual(self.chat(temperature=0).choices[0].message.content, r.choices[0].message.content)

    def test_streaming_chat_reassembles_to_the_non_streamed_text(self):
        kw = dict(temperature=0.9, top_p=0.95, seed=77, max_tokens=24)
        whole = self.chat(**kw)
        stream = self.chat(stream=True, stream_options={"include_usage": True}, **kw)
        text, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    text.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
        self.assertEqual("".join(text), whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)

    def test_sampling_controls_and_n(self):
        controls = dict(
            n=3,
            temperature=1.2,
            top_p=0.9,
            seed=3,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            logit_bias={"100": 5},
            stop=["\n\n"],
            extra_body={"top_k": 40, "min_p": 0.05},
        )
        r = self.chat(user="e2e", metadata={"suite": "e2e"}, **controls)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        again = self.chat(**controls)
        self.assertEqual([c.message.content for c in r.choices], [c.message.content for c in again.choices])

    def test_json_mode_replies_with_a_json_object(self):
        for seed in range(3):
            r = self.chat(response_format={"type": "json_object"}, max_tokens=400, temperature=0.8, seed=seed)
            content = r.choices[0].message.content
            if r.choices[0].finish_reason == "stop":
                self.assertIsInstance(json.loads(content), dict, content)
            else:
                self.assertEqual(r.choices[0].finish_reason, "length")
                self.assertTrue(content.lstrip().startswith("{"), content)

    def test_chat_logprobs(self):
        r = self.chat(temperature=0, logprobs=True, top_logprobs=2, max_tokens=5)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for entry in content:
            self.assertEqual(len(entry.top_logprobs), 2)
            self.assertAlmostEqual(entry.logprob, entry.top_logprobs[0].logprob, places=5)

    def test_completions_echo_logprobs_equal_log_softmax_of_herds_logits(self):
        ids = [1, 17, 42, 300, 255, 7, 99, 12]
        r = self.client.completions.create(
            model="chat-tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0
        )
        lp = r.choices[0].logprobs
        self.assertIsNone(lp.token_logprobs[0])
        logits = herd_logits(CHAT_TINY, ids)
        for i in range(1, len(ids)):
            expected = log_softmax_at(logits[i - 1], ids[i])
            self.assertAlmostEqual(lp.token_logprobs[i], expected, delta=1e-4, msg=f"position {i}")
        # And with generated tokens after the echo.
        r = self.client.completions.create(model="chat-tiny", prompt="Once upon a time", max_tokens=4, echo=True, logprobs=0, temperature=0)
        self.assertTrue(r.choices[0].text.startswith("Once upon a time"))

    def test_completions_text_list_and_stream(self):
        r = self.client.completions.create(model="chat-tiny", prompt=["Hi", "Bye"], max_tokens=5, temperature=0)
        self.assertEqual(len(r.choices), 2)
        streamed = "".join(
            c.choices[0].text
            for c in self.client.completions.create(model="chat-tiny", prompt="Hi", max_tokens=5, temperature=0, stream=True)
            if c.choices
        )
        self.assertEqual(streamed, r.choices[0].text)

    def test_tools_are_accepted(self):
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        r = self.chat(tools=tools, tool_choice="auto", temperature=0)
        msg = r.choices[0].message
        self.assertTrue(msg.tool_calls is None or isinstance(msg.tool_calls, list))
        # A conversation with an earlier call and its result renders.
        messages = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
        r = self.chat(messages=messages, tools=tools, temperature=0)
        self.assertIsInstance(r.choices[0].message.content, (str, type(None)))

    def test_bad_requests_are_400s_and_the_server_keeps_serving(self):
        bad = [
            dict(messages=[{"role": "wizard", "content": "x"}]),
            dict(temperature="hot"),
            dict(n=0),
            dict(max_tokens=-1),
            dict(extra_body={"frobnicate": 1}),
            dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
        ]
        for kw in bad:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)) as e:
                self.chat(**kw)
            self.assertEqual(e.exception.status_code, 400)
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="chat-tiny", prompt=[5] * 5000, max_tokens=1)
        message = str(e.exception)
        self.assertIn("5000", message)
        self.assertIn("4096", message)
        # Malformed JSON straight over HTTP.
        req = urllib.request.Request(self.server.url + "/v1/chat/completions", data=b"{oops", headers={"content-type": "application/json"})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        self.assertEqual(e.exception.code, 400)
        self.assertIn("error", json.loads(e.exception.read()))
        self.assertEqual(self.chat(temperature=0, max_tokens=2).object, "chat.completion")

    def test_a_client_that_disconnects_mid_stream_frees_its_request(self):
        stream = self.chat(stream=True, max_tokens=3000, extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            health = self.server.get_json("/health")
            if health["running"] == 0 and health["waiting"] == 0:
                break
            time.sleep(0.05)
        else:
            self.fail(f"the abandoned request kept running: {health}")

    def test_sixteen_concurrent_streams_each_equal_their_sequential_run(self):
        def run(i: int) -> str:
            stream = self.chat(
                messages=[{"role": "user", "content": f"Client {i} says " + "hello " * i}],
                stream=True,
                temperature=0.8,
                seed=i,
                max_tokens=10 + i,
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        sequential = [run(i) for i in range(16)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            concurrent_results = list(pool.map(run, range(16)))
        self.assertEqual(concurrent_results, sequential)

    def test_metrics(self):
        self.chat(temperature=0, max_tokens=2)
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        for name in [
            "herd_requests_total",
            "herd_prompt_tokens_total",
            "herd_generation_tokens_total",
            "herd_queue_depth",
            "herd_running_sequences",
            "herd_kv_reserved_bytes",
            "herd_time_to_first_token_seconds_bucket",
            "herd_inter_token_latency_seconds_bucket",
        ]:
            self.assertIn(name, text)


class ApiKey(unittest.TestCase):
    def test_401_without_the_key_and_200_with_it(self):
        server = Server(CHAT_TINY, env={"HERD_API_KEY": "s3cret"})
        try:
            with self.assertRaises(openai.AuthenticationError) as e:
                server.client(api_key="wrong").models.list()
            self.assertEqual(e.exception.status_code, 401)
            r = server.client(api_key="s3cret").chat.completions.create(
                model="chat-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            self.assertEqual(r.object, "chat.completion")
        finally:
            server.stop()


@unittest.skipUnless(VISION_CHAT_TINY.exists(), "fixtures/vision-chat-tiny is missing")
class Images(unittest.TestCase):
    def test_an_image_in_the_prompt(self):
        server = Server(VISION_CHAT_TINY)
        try:
            png = (ROOT / "fixtures" / "images" / "tiny.png").read_bytes()
            url = "data:image/png;base64," + base64.b64encode(png).decode()
            client = server.client()
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}]
            r = client.chat.completions.create(model="x", messages=messages, max_tokens=6, temperature=0)
            # The image counts in the prompt: more tokens than the text alone.
            text_only = client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "What is this?"}], max_tokens=1, temperature=0
            )
            self.assertGreater(r.usage.prompt_tokens, text_only.usage.prompt_tokens)
            again = client.chat.completions.create(model="x", messages=messages, max_tokens=6, temperature=0)
            self.assertEqual(again.choices[0].message.content, r.choices[0].message.content)
            with self.assertRaises(openai.BadRequestError):
                bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]
                client.chat.completions.create(model="x", messages=bad, max_tokens=2)
            with self.assertRaises(openai.BadRequestError):
                remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]
                client.chat.completions.create(model="x", messages=remote, max_tokens=2)
        finally:
            server.stop()


    def test_an_http_image_url_when_the_server_allows_it(self):
        import functools
        import http.server

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(ROOT / "fixtures" / "images"))
        host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=host.serve_forever, daemon=True).start()
        server = Server(VISION_CHAT_TINY, "--allow-image-urls", "--image-url-timeout-secs", "5")
        try:
            client = server.client()
            png = (ROOT / "fixtures" / "images" / "tiny.png").read_bytes()
            ask = lambda url: client.chat.completions.create(
                model="x",
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}],
                max_tokens=6,
                temperature=0,
            )
            fetched = ask(f"http://127.0.0.1:{host.server_address[1]}/tiny.png")
            inline = ask("data:image/png;base64," + base64.b64encode(png).decode())
            self.assertEqual(fetched.choices[0].message.content, inline.choices[0].message.content)
            with self.assertRaises(openai.BadRequestError):
                ask(f"http://127.0.0.1:{host.server_address[1]}/no-such.png")
        finally:
            server.stop()
            host.shutdown()
            host.server_close()


class Shutdown(unittest.TestCase):
    def test_sigterm_drains_a_request_in_flight(self):
        server = Server(CHAT_TINY)
        client = server.client()
        result = {}

        def request():
            result["r"] = client.chat.completions.create(
                model="chat-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=200, extra_body={"ignore_eos": True}
            )

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.3)
        server.proc.terminate()
        t.join(timeout=60)
        self.assertEqual(result["r"].usage.completion_tokens, 200, "the request in flight finished")
        self.assertEqual(server.proc.wait(timeout=40), 0)
        server.stop()


class Guard(unittest.TestCase):
    """`--guard` on the Llama Guard 4-shaped tiny checkpoint. Its weights are random, so its
    replies are not verdicts: /v1/moderations reports a parse error (not flagged) and screening
    fails closed (every chat is refused)."""

    def test_moderations_in_openai_shape(self):
        server = Server(CHAT_TINY, "--guard", str(GUARD_CHAT_TINY))
        try:
            client = server.client()
            r = client.moderations.create(model="omni-moderation-latest", input=["how do I make a bomb?", "hello"])
            self.assertTrue(r.id.startswith("modr-"))
            self.assertEqual(r.model, "guard-chat-tiny")
            self.assertEqual(len(r.results), 2)
            for result in r.results:
                self.assertFalse(result.flagged)
                self.assertFalse(result.categories.violence)
                self.assertEqual(result.category_scores.violence, 0.0)
                herd = result.model_extra["herd"]
                self.assertEqual(herd["verdict"], "parse_error")
                self.assertGreater(herd["unsafe_probability"], 0.0)
            # The same string twice gives the same answer (greedy), checked side by side. The
            # first time it shared the batch with "hello", so its logits may differ from this
            # lone run's by summation order (the batch tests' bound: 1e-5 absolute), which moves
            # the probability by ~1e-5 relative (a CI run saw 1e-6); the text and verdict are
            # the same tokens.
            r2 = client.moderations.create(input="how do I make a bomb?")
            alone, batched = dict(r2.results[0].model_extra["herd"]), dict(r.results[0].model_extra["herd"])
            p_alone, p_batched = alone.pop("unsafe_probability"), batched.pop("unsafe_probability")
            self.assertEqual(alone, batched)
            self.assertTrue(math.isclose(p_alone, p_batched, rel_tol=1e-4), (p_alone, p_batched))
            with self.assertRaises(openai.BadRequestError) as e:
                client.moderations.create(input=[])
            self.assertEqual(e.exception.body["param"], "input")
        finally:
            server.stop()

    def test_input_screening_refuses_with_the_refusal_text_or_a_content_filter_error(self):
        server = Server(CHAT_TINY, "--guard", str(GUARD_CHAT_TINY), "--guard-mode", "input", "--guard-refusal", "Sorry, no.")
        try:
            r = server.client().chat.completions.create(
                model="chat-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            self.assertEqual(r.choices[0].message.content, "Sorry, no.")
            self.assertEqual(r.choices[0].finish_reason, "content_filter")
            chunks = list(
                server.client().chat.completions.create(
                    model="chat-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
                )
            )
            self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "Sorry, no.")
        finally:
            server.stop()
        server = Server(CHAT_TINY, "--guard", str(GUARD_CHAT_TINY), "--guard-mode", "both")
        try:
            with self.assertRaises(openai.BadRequestError) as e:
                server.client().chat.completions.create(
                    model="chat-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5
                )
            self.assertEqual(e.exception.code, "content_filter")
        finally:
            server.stop()

    def test_no_guard_no_moderations(self):
        server = Server(CHAT_TINY)
        try:
            with self.assertRaises(openai.NotFoundError):
                server.client().moderations.create(input="x")
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
