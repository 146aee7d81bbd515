"""`lspt serve`: a real server (a subprocess running uvicorn on a free loopback port), spoken to over
HTTP. Mixed-task concurrent requests equal `lspt predict`; the watched directory adds and removes
tasks; bad inputs get a 4xx with a one-line reason and the server keeps serving; SIGTERM drains."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundle_factory import SPECS, assert_same_predictions, make_bundle, make_bundles, png_bytes
from conftest import free_port

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

TOKEN = "s3cret-token"
NAMES = [name for name, _, _ in SPECS]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    bundles: dict
    watch: Path
    base: Path
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


def start_server(base: Path, *args, token: str | None = TOKEN, startup_s: float = 120) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {**os.environ, "LSPT_HOME": str(base / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("LSPT_SERVE_TOKEN", None)
    stderr = base / f"server-{port}.err"
    command = [sys.executable, "-m", "lspt_cli", "serve", *map(str, args), "--port", str(port), "--device", "cpu"]
    if token:
        command += ["--token", token]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + startup_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {stderr.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return proc, url, stderr
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not come up in {startup_s:g} s: " + stderr.read_text())


def call(url: str, path: str, *, doc=None, body: bytes | None = None, content_type: str | None = None,
         token: str | None = TOKEN, method: str | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    headers = {}
    if doc is not None:
        body, content_type = json.dumps(doc).encode(), "application/json"
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, ctype = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multipart(fields: dict, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "lsptboundary7d9"
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for i, (key, data) in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="i{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    bundles = make_bundles(base / "bundles")
    watch = base / "watch"
    watch.mkdir()
    proc, url, stderr = start_server(
        base, *bundles.values(), "--watch", watch, "--watch-interval", "0.2", "--max-wait-ms", "40", "--max-batch", "64",
        "--max-images", "8", "--max-body-mb", "1", "--max-pixels", "10000", "--read-timeout", "3",
    )
    yield Server(url, proc, bundles, watch, base, stderr)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()




# -- results -----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_mixed_task_concurrent_requests_equal_lspt_predict(server):
    from lspt_cli.cli.predict import predict_images

    images = [png_bytes(seed) for seed in range(12)]
    paths = []
    for i, data in enumerate(images):
        path = server.base / f"img{i}.png"
        path.write_bytes(data)
        paths.append(path)
    requests = [(NAMES[i % len(NAMES)], [(i + j) % len(images) for j in range(1 + i % 3)]) for i in range(36)]

    def send(job):
        task, idx = job
        return call(server.url, "/v1/predict", doc={"task": task, "images": [b64(images[k]) for k in idx], "top_k": 3})

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, requests))
    expected = {name: predict_images([server.bundles[name]], paths, top_k=3, device="cpu")[str(server.bundles[name])]
                for name in NAMES}
    fingerprints = set()
    for (task, idx), (status, doc) in zip(requests, answers):
        assert status == 200, doc
        assert doc["task"] == task and len(doc["predictions"]) == len(idx)
        assert_same_predictions(doc["predictions"], [expected[task][str(paths[k])] for k in idx])
        assert {"total", "queue", "model"} <= set(doc["latency_ms"]) and doc["batch_images"] >= len(idx)
        fingerprints.add(doc["fingerprint"])
    assert len(fingerprints) == 1  # one backbone for all six tasks
    status, text = call(server.url, "/metrics")
    assert status == 200
    metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(metrics['lspt_batch_tasks_bucket{le="1"}']) < float(metrics["lspt_batch_tasks_count"])  # cross-task batches
    assert float(metrics['lspt_batch_images_bucket{le="2"}']) < float(metrics["lspt_batch_images_count"])
    assert float(metrics['lspt_requests_total{code="200",task="gapt2"}']) >= 6
    assert "lspt_queue_wait_seconds_bucket" in text and "lspt_request_latency_seconds_count" in text
    assert metrics["lspt_tasks"] == "6" and metrics["lspt_backbones"] == "1"


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_multipart_upload_equals_json(server):
    images = [png_bytes(20), png_bytes(21)]
    body, ctype = multipart({"task": "lspt3", "top_k": "2"}, [("images", d) for d in images])
    status, by_form = call(server.url, "/v1/predict", body=body, content_type=ctype)
    assert status == 200, by_form
    status, by_json = call(server.url, "/v1/predict", doc={"task": "lspt3", "images": [b64(d) for d in images], "top_k": 2})
    assert status == 200
    assert_same_predictions(by_form["predictions"], by_json["predictions"])
    assert len(by_form["predictions"][0]) == 2


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_tasks_show_the_bundles_metadata_and_no_server_paths(server):
    status, doc = call(server.url, "/v1/tasks")
    assert status == 200
    tasks = {t["name"]: t for t in doc["tasks"]}
    assert set(NAMES) <= set(tasks)
    assert tasks["gapt2"]["strategy"]["name"] == "gapt" and tasks["gapt2"]["strategy"]["config"]["num_prompts"] == 2
    assert tasks["lin"]["backbone"]["name"] == "vit-tiny" and tasks["lin"]["classes"][0] == "c0"
    assert "metrics" in tasks["lin"]
    text = json.dumps(doc)
    assert str(server.base) not in text and "safetensors" not in text
    assert call(server.url, "/healthz", token=None) == (200, {"status": "ok", "tasks": len(tasks)})


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_bad_inputs_get_a_one_line_4xx_and_the_server_keeps_serving(server):
    good = {"task": "lin", "images": [b64(png_bytes(1))]}
    big_image = png_bytes(2, size=(200, 200))  # 40,000 pixels > --max-pixels 10000
    cases = [
        ("corrupt image", dict(doc={**good, "images": [b64(b"GIF89a not really")]}), 400, "cannot decode image 0"),
        ("empty image", dict(doc={**good, "images": [""]}), 400, "empty"),
        ("huge image", dict(doc={**good, "images": [b64(big_image)]}), 413, "too large"),
        ("wrong content type", dict(body=b"hello", content_type="text/plain"), 415, "unsupported content type"),
        ("no content type", dict(body=b"hello"), 415, "unsupported content type"),
        ("unknown task", dict(doc={**good, "task": "../../etc/passwd"}), 404, "unknown task"),
        ("too many images", dict(doc={**good, "images": [b64(png_bytes(1))] * 9}), 413, "at most 8"),
        ("no images", dict(doc={**good, "images": []}), 400, "no images"),
        ("bad base64", dict(doc={**good, "images": ["%%%"]}), 400, "not valid base64"),
        ("images not a list", dict(doc={**good, "images": "abc"}), 400, "'images' must be a list"),
        ("bad json", dict(body=b"{nope", content_type="application/json"), 400, "not valid JSON"),
        ("json array", dict(doc=[1, 2]), 400, "JSON object"),
        ("unknown field", dict(doc={**good, "path": "/etc/passwd"}), 400, "unknown field 'path'"),
        ("top_k 0", dict(doc={**good, "top_k": 0}), 400, "top_k"),
        ("top_k text", dict(doc={**good, "top_k": "all"}), 400, "top_k"),
        ("missing task", dict(doc={"images": good["images"]}), 400, "'task'"),
        ("missing token", dict(doc=good, token=None), 401, "missing bearer token"),
        ("wrong token", dict(doc=good, token="guess"), 401, "invalid bearer token"),
        ("bad multipart", dict(body=b"--x\r\ngarbage", content_type="multipart/form-data; boundary=x"), 400, None),
        ("multipart text image", dict(body=multipart({"task": "lin", "images": "abc"}, [])[0],
                                      content_type=multipart({}, [])[1]), 400, "file parts"),
    ]
    for what, kwargs, code, fragment in cases:
        status, doc = call(server.url, "/v1/predict", **kwargs)
        assert status == code, (what, status, doc)
        assert isinstance(doc, dict) and set(doc) == {"error"}, (what, doc)
        assert "\n" not in doc["error"] and len(doc["error"]) <= 300, (what, doc)
        if fragment:
            assert fragment in doc["error"], (what, doc)
    for path, code in (("/nope", 404), ("/v1/tasks", 401), ("/metrics", 401)):
        status, doc = call(server.url, path, token=None)
        assert status == code and set(doc) == {"error"}, (path, doc)
    status, doc = call(server.url, "/v1/predict", token=TOKEN, method="GET")
    assert status == 405 and set(doc) == {"error"}
    assert call(server.url, "/healthz", token=None)[0] == 200
    status, doc = call(server.url, "/v1/predict", doc=good)
    assert status == 200 and len(doc["predictions"]) == 1


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_an_oversized_body_is_refused_from_its_declared_length_or_as_it_streams(server):
    """--max-body-mb 1: a Content-Length over it is answered before any byte of the body is read; a
    chunked body (no length up front) is counted as it arrives and cut once over the limit."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/v1/predict")
    for key, value in (("Content-Type", "application/json"), ("Authorization", f"Bearer {TOKEN}"), ("Content-Length", "5000000")):
        conn.putheader(key, value)
    conn.endheaders()  # the body is never sent
    response = conn.getresponse()
    assert response.status == 413 and "5,000,000 bytes is over the limit" in json.loads(response.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (b"x" * 65536 for _ in range(18))  # 1.125 MiB > 1 MiB, in chunks
    conn.request("POST", "/v1/predict", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    conn.close()
    assert call(server.url, "/healthz", token=None)[0] == 200


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_a_stalled_client_does_not_stall_anyone_else(server):
    """A client that sends half its body and stops holds only its own connection: others are served
    meanwhile (the batcher only ever sees decoded tensors), and the stalled one gets 408 (--read-timeout 3)."""
    import socket

    sock = socket.create_connection(server.url.removeprefix("http://").split(":"), timeout=30)
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"task\": \"lin\"")
    start = time.time()
    status, doc = call(server.url, "/v1/predict", doc={"task": "lin", "images": [b64(png_bytes(4))]})
    assert status == 200 and time.time() - start < 2.5
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"not received within 3 s" in reply


# -- the watched directory -----------------------------------------------------------------------------------
def wait_for(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def served(server) -> set[str]:
    return {t["name"] for t in call(server.url, "/v1/tasks")[1]["tasks"]}


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_watched_directory_adds_reloads_and_removes_tasks(server):
    image = {"images": [b64(png_bytes(3))], "top_k": 3}
    tmp = server.watch / ".incoming.safetensors"  # dot files are ignored: copy, then rename into place
    shutil.copy(server.bundles["deep2"], tmp)
    tmp.rename(server.watch / "newtask.safetensors")
    assert wait_for(lambda: "newtask" in served(server)), server.log()
    status, doc = call(server.url, "/v1/predict", doc={"task": "newtask", **image})
    assert status == 200
    assert_same_predictions(doc["predictions"], call(server.url, "/v1/predict", doc={"task": "deep2", **image})[1]["predictions"])
    # a corrupt file and a bundle of other backbone weights are refused when loaded, with a warning
    (server.watch / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    make_bundle(server.base / "alien.safetensors", "vpt-deep", {"num_prompts": 2}, seed=3, vit_seed=9)
    shutil.copy(server.base / "alien.safetensors", server.watch / "alien.safetensors")
    assert wait_for(lambda: "not serving alien.safetensors" in server.log() and "not serving broken.safetensors" in server.log())
    assert "fingerprint" in server.log()
    assert {"broken", "alien"}.isdisjoint(served(server))
    # replaced in place: reloaded (other prompts, other answers)
    make_bundle(server.base / "v2.safetensors", "gapt", {"num_prompts": 2}, seed=77)
    shutil.copy(server.base / "v2.safetensors", server.watch / ".v2.safetensors")
    os.replace(server.watch / ".v2.safetensors", server.watch / "newtask.safetensors")
    assert wait_for(lambda: next(t for t in call(server.url, "/v1/tasks")[1]["tasks"] if t["name"] == "newtask")["strategy"]["name"] == "gapt")
    (server.watch / "newtask.safetensors").unlink()
    assert wait_for(lambda: "newtask" not in served(server)), server.log()
    status, doc = call(server.url, "/v1/predict", doc={"task": "newtask", **image})
    assert status == 404
    assert set(NAMES) <= served(server)  # the explicitly named bundles are not the watcher's to remove
    (server.watch / "broken.safetensors").unlink()
    (server.watch / "alien.safetensors").unlink()


# -- SIGTERM drains ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("serve")
def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    bundles = make_bundles(tmp_path / "bundles", SPECS[:2])
    proc, url, stderr = start_server(tmp_path, *bundles.values(), "--max-wait-ms", "6000", "--max-batch", "64", token=None)
    results = {}

    def send(name):
        results[name] = call(url, "/v1/predict", token=None, doc={"task": name, "images": [b64(png_bytes(5))]})

    threads = [threading.Thread(target=send, args=(name,)) for name in bundles]
    for t in threads:
        t.start()
    def queued() -> bool:
        text = call(url, "/metrics", token=None)[1]
        return "lspt_queue_images 2" in text

    assert wait_for(queued, timeout=20)  # both requests wait in the batcher (max wait 6 s from the first)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert proc.wait(60) == 0, stderr.read_text()
    for name, (status, doc) in results.items():
        assert status == 200 and doc["task"] == name, doc
        assert doc["batch_images"] == 2  # they still went through together
    assert "lspt serve: stopped" in stderr.read_text()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(url + "/healthz", timeout=5)


# -- the command line (no server started) -------------------------------------------------------------------------
def test_serve_refuses_unsafe_or_impossible_setups_before_binding(cli, tmp_path):
    bundles = make_bundles(tmp_path / "b", SPECS[:1])
    result = cli("serve", str(bundles["lin"]), "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--token" in result.output and "--insecure" in result.output
    result = cli("serve")
    assert result.exit_code == 2 and "needs bundles or --watch" in result.output
    alien = make_bundle(tmp_path / "alien.safetensors", "vpt-deep", {"num_prompts": 2}, seed=3, vit_seed=9)
    result = cli("serve", str(alien), "--port", str(free_port()))
    assert result.exit_code == 1 and "fingerprint" in result.output
    result = cli("serve", f"x={bundles['lin']}", f"x={bundles['lin']}", "--port", str(free_port()))
    assert result.exit_code == 2 and "two bundles are served as task 'x'" in result.output
    result = cli("serve", "bad name=foo.safetensors")
    assert result.exit_code == 2 and "task name" in result.output


# -- the batcher, in process ------------------------------------------------------------------------------------
class FakeTask:
    """What the batcher reads of a registry.Task: the model and its backbone."""

    def __init__(self, model):
        self.model = model

    @property
    def backbone(self):
        return self.model.model.backbone


def test_the_batcher_mixes_tasks_splits_at_max_batch_and_drains_on_stop(tmp_path):
    import torch

    import lspt
    from lspt_cli.serve.batcher import Batcher, QueueFull
    from lspt_cli.serve.metrics import Metrics

    paths = make_bundles(tmp_path, SPECS)
    many = lspt.load_many([paths[n] for n in NAMES])
    other = lspt.load(make_bundle(tmp_path / "alien.safetensors", "gapt", {"num_prompts": 2}, seed=5, vit_seed=9),
                      allow_backbone_mismatch=True)  # another backbone object: a pass of its own
    tasks = [FakeTask(many[n]) for n in NAMES] + [FakeTask(other)]
    metrics = Metrics()
    batcher = Batcher(max_batch=5, max_wait_ms=200, max_queue=40, metrics=metrics)
    g = torch.Generator().manual_seed(0)
    jobs = [(tasks[i % len(tasks)], torch.randn(1 + i % 3, 3, 32, 32, generator=g)) for i in range(14)]
    futures = [batcher.submit(task, x) for task, x in jobs]  # queued before the worker starts: batches fill up
    with pytest.raises(QueueFull, match="--max-queue 40"):
        batcher.submit(tasks[0], torch.zeros(40, 3, 32, 32))
    batcher.start()
    results = [f.result(timeout=60) for f in futures]
    batcher.stop()
    for (task, x), logits, future in zip(jobs, results, futures):
        with torch.no_grad():
            torch.testing.assert_close(logits, task.model(x), atol=1e-5, rtol=1e-5)
        assert future.timing[2] <= 5 or future.timing[2] == x.shape[0]  # never over max_batch unless alone
    assert batcher.batches < len(jobs) and metrics.max_batch_seen <= 5 and batcher.queued_images == 0
    late = Batcher(max_batch=4, max_wait_ms=10_000)
    late.start()
    pending = late.submit(tasks[1], torch.randn(1, 3, 32, 32))
    late.stop()  # does not wait the 10 s: stop runs what is queued
    assert pending.result(timeout=1).shape == (1, 10)


def test_metrics_render_the_prometheus_text_format():
    from lspt_cli.serve.metrics import Metrics

    m = Metrics()
    m.requests.inc(task='a"b', code="200")
    m.request_latency.observe(0.003)
    m.request_latency.observe(20)
    text = m.render()
    assert 'lspt_requests_total{code="200",task="a\\"b"} 1' in text
    assert 'lspt_request_latency_seconds_bucket{le="0.005"} 1' in text
    assert 'lspt_request_latency_seconds_bucket{le="+Inf"} 2' in text and "lspt_request_latency_seconds_count 2" in text
    assert "# TYPE lspt_batch_images histogram" in text and text.endswith("\n")


def test_only_loopback_binds_without_a_token():
    from lspt_cli.errors import UsageError
    from lspt_cli.serve.server import check_exposure, is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
    check_exposure("0.0.0.0", "tok", False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(UsageError, match="--token"):
        check_exposure("0.0.0.0", None, False)


# -- --engine ray: the same app as a Ray Serve deployment (a local Ray cluster) -----------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_engine_ray_serves_the_same_answers_from_replicas(tmp_path):
    pytest.importorskip("ray.serve")
    from lspt_cli.cli.predict import predict_images

    bundles = make_bundles(tmp_path / "bundles", SPECS[:3])
    proc, url, stderr = start_server(tmp_path, *bundles.values(), "--engine", "ray", "--replicas", "2",
                                     "--cpus-per-replica", "0", "--max-wait-ms", "20", token=TOKEN, startup_s=400)
    try:
        images = [png_bytes(s) for s in range(4)]
        paths = []
        for i, data in enumerate(images):
            (tmp_path / f"r{i}.png").write_bytes(data)
            paths.append(tmp_path / f"r{i}.png")
        jobs = [(NAMES[i % 3], i % 4) for i in range(12)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda job: call(url, "/v1/predict", doc={"task": job[0], "images": [b64(images[job[1]])]}), jobs))
        for (task, k), (status, doc) in zip(jobs, answers):
            assert status == 200, doc
            expected = predict_images([bundles[task]], [paths[k]], top_k=5, device="cpu")[str(bundles[task])][str(paths[k])]
            assert_same_predictions(doc["predictions"], [expected])
        assert call(url, "/v1/predict", token=None, doc={"task": "lin", "images": [b64(images[0])]})[0] == 401
        status, doc = call(url, "/v1/predict", doc={"task": "lin", "images": [b64(b"junk")]})
        assert status == 400 and "cannot decode image 0" in doc["error"]
        assert {t["name"] for t in call(url, "/v1/tasks")[1]["tasks"]} == set(NAMES[:3])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, stderr.read_text()
    assert "lspt serve: stopped" in stderr.read_text()


def test_dry_run_loads_everything_and_shows_the_batch_groups(cli, tmp_path):
    bundles = make_bundles(tmp_path / "b")
    result = cli("serve", *map(str, bundles.values()), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [t["name"] for t in doc["tasks"]] == sorted(NAMES) and doc["backbones"] == 1
    groups = sorted(sorted(g["tasks"]) for g in doc["batch_groups"])
    # same token count batches in every block, across families; the linear probes alone
    assert groups == [["deep2", "deep2b", "gapt2"], ["lin"], ["lspt3", "shallow3"]]
    text = cli("serve", str(bundles["lin"]), "--dry-run").stdout
    assert "lin: linear 0 prompt(s), 10 classes" in text and "1 task(s) on 1 backbone(s) in 1 batch group(s)" in text
    broken = tmp_path / "b" / "broken.safetensors"
    broken.write_bytes(b"junk")
    result = cli("serve", str(broken), "--dry-run")
    assert result.exit_code == 1 and "broken.safetensors" in result.output


def test_serve_without_the_extra_names_it(cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    result = cli("serve", "x.safetensors")
    assert result.exit_code == 2 and "needs the 'serve' extra (fastapi missing)" in result.output
    assert "pip install 'lspt[serve]'" in result.output
