"""The inference service against real running servers (``ferflow serve`` / ``bentoml serve``).

Two servers start once per module on free localhost ports: one open, one with an API key and
small upload limits. The model is the committed reference model when it exists; otherwise a
small ResNet trained for a few steps on real FERPlus crops and exported to ONNX (session
fixture, ~30 s). Needs the DVC-pulled FERPlus data and, for some tests, the shared sample
photos; the demo test needs Debian's chromium (/usr/bin/chromium) and Playwright.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.metadata
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from ferflow.config import FERPLUS_EMOTIONS
from ferflow.inference import (
    EmptyInput,
    ImageLimits,
    ImageTooSmall,
    InferenceError,
    InvalidImage,
    PayloadTooLarge,
    ServingConfig,
    UnsupportedFormat,
    decode_image,
    is_small_image,
)
from ferflow.predict import REFERENCE_MODEL, FerClassifier
from tests.conftest import ROOT

API_KEY = "test-key-3f9c2b7d"
AUTH_LIMITS = {
    "FERFLOW_MAX_UPLOAD_BYTES": str(200 * 1024),
    "FERFLOW_MAX_PIXELS": str(2_000_000),
    "FERFLOW_MAX_VIDEO_BYTES": str(1_000_000),
    "FERFLOW_MAX_VIDEO_SECONDS": "2",
}
VIDEO = ROOT.parent / "shared" / "samples" / "video"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# A few training steps on real crops: a real (weak) model when no reference model exists yet.
TRAIN_SMALL_MODEL = """
import csv, sys
from pathlib import Path
import numpy as np
from PIL import Image
import keras
from ferflow.config import FERPLUS_EMOTIONS
from ferflow.export import export_onnx
from ferflow.models import build_model
from ferflow.preprocess import to_model_input

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [r for r in csv.reader(open(folder / "label.csv")) if r][:3000]
x, y = [], []
for r in rows:
    votes = np.array([int(v) for v in r[2:10]])
    if votes.max() * 2 > votes.sum() > 0:
        x.append(np.asarray(Image.open(folder / r[0]).convert("L")))
        y.append(int(votes.argmax()))
keras.utils.set_random_seed(0)
model = build_model("resnet", len(FERPLUS_EMOTIONS), width=16, depths=(1, 1, 1, 1))
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(to_model_input(np.stack(x)), np.array(y), batch_size=64, epochs=1, steps_per_epoch=25, verbose=0)
export_onnx(model, out, FERPLUS_EMOTIONS, {"model": "resnet-test"})
print(out)
"""


@pytest.fixture(scope="session")
def model_path(ferplus_dir: Path, tmp_path_factory) -> Path:
    """The reference model, or a small real model trained and exported for these tests."""
    if REFERENCE_MODEL.is_file():
        return REFERENCE_MODEL
    out = tmp_path_factory.mktemp("serving-model") / "model.onnx"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", TRAIN_SMALL_MODEL, str(ferplus_dir / "FER2013Train"), str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    tasks: Path | None = None  # FERFLOW_TASK_DIR

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kw)

    def put(self, path: str, **kw) -> httpx.Response:
        return httpx.put(self.url + path, timeout=30, **kw)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]


def _start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if server.get("/readyz").status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop(server)
    raise RuntimeError(f"server not ready in 120 s:\n{log.read_text()[-3000:]}")


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)  # the process group this fixture started
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)


def _env(model: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERFLOW_", "MLFLOW_"))}
    return {**env, "FERFLOW_MODEL": str(model), **extra}


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory) -> Iterator[Server]:
    """``ferflow serve`` (the CLI path) with default limits and no auth."""
    port = _free_port()
    ferflow = Path(sys.executable).parent / "ferflow"
    cmd = [str(ferflow), "serve", "--host", "127.0.0.1", "--port", str(port)]
    folder = tmp_path_factory.mktemp("srv")
    env = _env(model_path, FERFLOW_TASK_DIR=str(folder / "tasks"))
    srv = _start(cmd, env, port, folder / "server.log")
    srv.tasks = folder / "tasks"
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def auth_server(model_path: Path, tmp_path_factory) -> Iterator[Server]:
    """``bentoml serve`` with FERFLOW_API_KEY and small upload/pixel limits."""
    port = _free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:FERService"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    home = tmp_path_factory.mktemp("auth")  # its own BentoML home: /metrics not shared with `server`
    env = _env(model_path, FERFLOW_API_KEY=API_KEY, BENTOML_HOME=str(home / "bentoml"), **AUTH_LIMITS)
    env["FERFLOW_EXAMPLES_DIR"] = str(home / "no-examples")  # absent: the demo's fallback
    srv = _start(cmd, env, port, home / "server.log")
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def classes(model_path: Path) -> list[str]:
    return FerClassifier(model_path).classes


# --- images --------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photos(photos_dir: Path, n: int | None = None) -> list[Path]:
    with open(photos_dir / "labels.csv", newline="") as f:
        names = [row["image"] for row in csv.DictReader(f)]
    return [photos_dir / name for name in names[:n]]


def _square_photos(photos_dir: Path, n: int) -> list[Path]:
    out = [p for p in _photos(photos_dir) if Image.open(p).size == (350, 350)]
    return out[:n]


def _bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit ``side`` x ``side`` PNG of a few tens of KB (zlib of zeros)."""
    raw = zlib.compress(b"\x00" * ((side // 8 + 1) * side), 9)

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _files(data: bytes, name: str = "photo.jpg", ctype: str = "image/jpeg", field: str = "image") -> dict:
    return {"files": {field: (name, data, ctype)}}


def _assert_error(r: httpx.Response, statuses: set[int], words: str) -> None:
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body["error"], str) and body["status"] == r.status_code
    assert words.lower() in body["error"].lower(), body["error"]


def _check_face(face: dict, classes: list[str], width: int, height: int) -> None:
    x, y, w, h = face["box"]
    assert all(isinstance(v, int) for v in face["box"])
    assert min(x, y) >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height
    assert list(face["scores"]) == classes
    assert abs(sum(face["scores"].values()) - 1) < 1e-3
    assert face["label"] == max(face["scores"], key=face["scores"].get)


# --- pure logic (no server) ----------------------------------------------------------------


def test_decode_image_refuses_bad_input_before_decoding() -> None:
    limits = ImageLimits(max_upload_bytes=100_000, max_pixels=1_000_000)
    ok = _encode(Image.new("RGB", (64, 48), (10, 20, 30)), "JPEG")
    rgb, scale = decode_image(ok, limits)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8 and scale == 1.0
    cases = [
        (b"", EmptyInput, "empty"),
        (b"hello, world\n" * 10, UnsupportedFormat, "text"),
        (b"GIF89a" + bytes(100), UnsupportedFormat, "GIF"),
        (ok[: len(ok) // 2], InvalidImage, "truncated"),
        (_encode(Image.new("L", (1, 1))), ImageTooSmall, "1x1"),
        (_encode(Image.new("L", (1001, 1000))), PayloadTooLarge, "before decoding"),
        (_bomb_png(), PayloadTooLarge, "pixels"),
        (bytes(100_001), PayloadTooLarge, "upload limit"),
    ]
    for data, error, words in cases:
        with pytest.raises(error, match=f"(?i){words}"):
            decode_image(data, limits, name="image")


def test_only_small_crops_count_as_small_images() -> None:
    """/classify decodes these on the event loop: the header must bound the work."""
    crop = _encode(Image.new("L", (48, 48), 128))
    assert is_small_image(crop)
    assert is_small_image(_encode(Image.new("RGB", (128, 128)), "JPEG"))
    assert is_small_image(crop[: len(crop) // 2])  # the header is whole: the decoder will refuse it
    assert not is_small_image(_encode(Image.new("L", (129, 128))))
    bomb = _bomb_png()
    assert len(bomb) < 64 * 2**10 and not is_small_image(bomb)  # a small file, a huge header
    assert not is_small_image(crop + bytes(70_000))  # over the byte bound, whatever the header says
    assert not is_small_image(b"hello, world\n" * 10)
    assert not is_small_image(b"\x89PNG\r\n\x1a\n" + bytes(30))  # corrupt header


def test_serving_config_from_env() -> None:
    cfg = ServingConfig.from_env({"FERFLOW_MAX_PIXELS": "1000000", "FERFLOW_API_KEY": "s3cr3t-key"})
    assert cfg.limits.max_pixels == 1_000_000 and cfg.api_key == "s3cr3t-key" and cfg.model_uri is None
    assert "s3cr3t" not in repr(cfg)  # the key never reaches logs through the config's repr
    with pytest.raises(ValueError, match="FERFLOW_MAX_UPLOAD_BYTES"):
        ServingConfig.from_env({"FERFLOW_MAX_UPLOAD_BYTES": "ten"})
    assert cfg.tracing is False  # spans cost event-loop time; on only when asked for
    assert ServingConfig.from_env({"FERFLOW_TRACING": "on"}).tracing is True
    assert ServingConfig.from_env({"FERFLOW_TRACING": "0"}).tracing is False
    with pytest.raises(ValueError, match="FERFLOW_TRACING"):
        ServingConfig.from_env({"FERFLOW_TRACING": "maybe"})


def test_serve_cli_fails_fast_on_missing_model(tmp_path: Path) -> None:
    env = {**_env(tmp_path / "absent.onnx")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ferflow"), "serve", "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "absent.onnx" in out.stderr and "FERFLOW_MODEL_URI" in out.stderr


# --- the running server ---------------------------------------------------------------------


def test_probes_metrics_docs(server: Server) -> None:
    for path in ("/livez", "/healthz", "/readyz"):
        assert server.get(path).status_code == 200
    paths = server.get("/docs.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/classify"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    server.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    metrics = server.get("/metrics").text
    assert "bentoml_service_request_total" in metrics
    rejected = [line for line in metrics.splitlines() if line.startswith("ferflow_rejected_requests_total{")]
    assert any(
        'endpoint="/predict"' in x and 'status="415"' in x and "UnsupportedFormat" in x for x in rejected
    )


def _resolve(spec: dict, schema: dict) -> dict:
    """``schema`` with its ``$ref`` to the document's components followed."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_api_docs_describe_ferflow_and_its_answers(server: Server) -> None:
    spec = server.get("/docs.json").json()
    info = spec["info"]
    assert info["title"] == "ferflow" and info["version"] == importlib.metadata.version("ferflow")
    assert not any(w in json.dumps(info).lower() for w in ("bentoml", "slack", "twitter", "contact")), info
    ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    body = _resolve(spec, ok["schema"])
    face = _resolve(spec, body["properties"]["faces"]["items"])["properties"]
    assert face["box"]["type"] == "array" and face["box"]["items"] == {"type": "integer"}
    assert face["box"]["minItems"] == face["box"]["maxItems"] == 4
    assert face["scores"]["type"] == "object" and face["scores"]["additionalProperties"]["type"] == "number"
    assert face["label"]["type"] == "string"
    assert _resolve(spec, body["properties"]["model"])["type"] == "object"
    example = ok["example"]["faces"][0]  # what Swagger UI shows instead of "string"
    assert len(example["box"]) == 4 and example["label"] == max(example["scores"], key=example["scores"].get)
    answers = [("/predict_batch", "post", "200"), ("/classify", "post", "200"), ("/model", "get", "200")]
    answers += [("/analyze_video", "post", "202"), ("/analyze_video/status", "get", "200")]
    answers += [("/analyze_video/get", "get", "200"), ("/analyze_video/cancel", "put", "200")]
    for path, method, code in answers:
        content = spec["paths"][path][method]["responses"][code]["content"]["application/json"]
        assert _resolve(spec, content["schema"])["properties"], (path, content)
    error = spec["paths"]["/predict"]["post"]["responses"]["415"]["content"]["application/json"]["schema"]
    assert set(_resolve(spec, error)["properties"]) == {"error", "status", "type", "request_id"}
    assert "/classify_batch" not in spec["paths"]  # internal; it still answers (see its own test)
    assert not [name for name in spec["components"]["schemas"] if "classify_batch" in name]
    assert {"/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    assert server.get("/openapi.json").json() == spec
    for path in ("/docs", "/"):  # Swagger UI of ./docs.json, served from this server (offline)
        page = server.get(path)
        assert page.status_code == 200 and "./docs.json" in page.text, path
        assert "googletagmanager" not in page.text and "ferflow" in page.text
    assert server.get("/swagger-ui/swagger-ui-bundle.js").status_code == 200


@pytest.mark.parametrize("uri", ["models:/nope@x", "absent.onnx"])
def test_a_server_that_cannot_load_its_model_exits(uri: str, tmp_path: Path) -> None:
    """``bentoml serve`` itself (no CLI pre-flight): exit status 1 with the reason in one line,
    instead of a worker restarted forever."""
    extra = {"FERFLOW_MODEL_URI": uri, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    if not uri.startswith("models:/"):
        extra = {"FERFLOW_MODEL_URI": str(tmp_path / uri)}
    env = _env(tmp_path / "unused.onnx", BENTOML_HOME=str(tmp_path / "bentoml"), **extra)
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:FERService"]
    cmd += ["--host", "127.0.0.1", "--port", str(_free_port())]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        pytest.fail(f"still running after 60 s:\n{log.read_text()[-3000:]}")
    lines = log.read_text().splitlines()
    assert proc.returncode == 1, lines[-20:]
    reasons = [line for line in lines if "ferflow: cannot start:" in line]
    assert reasons and uri in reasons[0] and "stopping the server" in reasons[0], lines
    assert len(lines) <= 20, lines  # no respawn loop, no tracebacks
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker left behind
        os.killpg(proc.pid, 0)


def test_predict_real_photos(server: Server, photos_dir: Path, classes: list[str]) -> None:
    found = 0
    photos = _photos(photos_dir, 12)
    for photo in photos:
        r = server.post("/predict", **_files(photo.read_bytes(), photo.name))
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["model"]) >= {"name", "version"}
        width, height = Image.open(photo).size
        for face in body["faces"]:
            _check_face(face, classes, width, height)
        found += bool(body["faces"])
    assert found >= len(photos) - 1
    if len(classes) == 8:
        assert classes == list(FERPLUS_EMOTIONS)


def test_predict_webp_and_png(server: Server, photos_dir: Path, classes: list[str]) -> None:
    img = Image.open(_square_photos(photos_dir, 1)[0]).convert("RGB")
    for fmt, ctype in (("WEBP", "image/webp"), ("PNG", "image/png")):
        r = server.post("/predict", **_files(_encode(img, fmt), f"x.{fmt.lower()}", ctype))
        assert r.status_code == 200, r.text
        assert len(r.json()["faces"]) == 1


def test_no_face_is_an_empty_list(server: Server) -> None:
    rng = np.random.default_rng(0)
    scenes = [
        Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)),
        Image.new("RGB", (640, 480), (200, 180, 160)),
    ]
    for img in scenes:
        r = server.post("/predict", **_files(_encode(img, "JPEG")))
        assert r.status_code == 200, r.text
        assert r.json()["faces"] == []


def test_many_faces_in_a_composed_scene(server: Server, photos_dir: Path, classes: list[str]) -> None:
    side, cols, rows, pad = 160, 4, 3, 20
    canvas = Image.new("RGB", (cols * side + 2 * pad, rows * side + 2 * pad), (90, 110, 90))
    for i, photo in enumerate(_square_photos(photos_dir, cols * rows)):
        canvas.paste(
            Image.open(photo).convert("RGB").resize((side, side)),
            (pad + i % cols * side, pad + i // cols * side),
        )
    r = server.post("/predict", **_files(_encode(canvas, "JPEG", quality=90)))
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    cells = set()
    for face in faces:
        _check_face(face, classes, *canvas.size)
        x, y, w, h = face["box"]
        cells.add(((x + w / 2 - pad) // side, (y + h / 2 - pad) // side))
    assert len(faces) >= 10 and len(cells) == len(faces)  # one face per photo, none twice


def test_predict_batch(server: Server, photos_dir: Path) -> None:
    photos = _square_photos(photos_dir, 3)
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    r = server.post("/predict_batch", files=files)
    assert r.status_code == 200, r.text
    single = [server.post("/predict", **_files(p.read_bytes())).json()["faces"] for p in photos]
    assert [res["faces"] for res in r.json()["results"]] == single
    bad = [*files[:1], ("image", ("notes.png", b"just text", "image/png"))]
    _assert_error(server.post("/predict_batch", files=bad), {415}, "image[1]")


def test_bad_input_gets_a_json_4xx_and_the_server_stays_up(server: Server, photos_dir: Path) -> None:
    jpeg = _square_photos(photos_dir, 1)[0].read_bytes()
    boundary = "XyZ123"
    multipart = f"multipart/form-data; boundary={boundary}"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + jpeg
    cases = [
        ("empty body", dict(content=b""), {415}, "Content-Type"),
        ("empty multipart body", dict(content=b"", headers={"content-type": multipart}), {400}, "empty"),
        ("empty file", _files(b""), {400}, "empty upload"),
        ("non-image bytes", _files(os.urandom(4096), "x.jpg"), {415}, "not a JPEG"),
        ("truncated JPEG", _files(jpeg[: len(jpeg) // 2]), {400}, "truncated"),
        ("text named .png", _files(b"I am not a picture\n" * 20, "face.png", "image/png"), {415}, "face.png"),
        ("1x1 image", _files(_encode(Image.new("RGB", (1, 1))), "dot.png", "image/png"), {422}, "1x1"),
        ("20000x20000 PNG", _files(_bomb_png(), "bomb.png", "image/png"), {413}, "pixels"),
        ("36 MP PNG", _files(_encode(Image.new("1", (6000, 6000))), "big.png"), {413}, "before decoding"),
        ("GIF", _files(_encode(Image.new("RGB", (64, 64)), "GIF"), "a.gif", "image/gif"), {415}, "GIF"),
        ("JSON body", dict(json={"image": "aGVsbG8="}), {415}, "application/json"),
        ("raw JPEG body", dict(content=jpeg, headers={"content-type": "image/jpeg"}), {415}, "image/jpeg"),
        (
            "no boundary",
            dict(content=part, headers={"content-type": "multipart/form-data"}),
            {400},
            "boundary",
        ),
        (
            "boundary mismatch",
            dict(content=part, headers={"content-type": multipart + "x"}),
            {400},
            "malformed",
        ),
        (
            "no closing boundary",
            dict(content=part, headers={"content-type": multipart}),
            {400},
            "closing boundary",
        ),
        ("wrong field", _files(jpeg, field="photo"), {400}, "no field 'image'"),
        (
            "two images",
            dict(files=[("image", ("a.jpg", jpeg)), ("image", ("b.jpg", jpeg))]),
            {400},
            "one image",
        ),
    ]
    for name, kwargs, statuses, words in cases:
        for path in ("/predict", "/classify"):
            r = server.post(path, **kwargs)
            try:
                _assert_error(r, statuses, words)
            except AssertionError as exc:
                raise AssertionError(f"{path} {name}: {exc}") from None
    _assert_error(server.get("/predict"), {405}, "")
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200
    r = server.post("/predict", **_files(jpeg))
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_limits_and_api_key(auth_server: Server, photos_dir: Path) -> None:
    jpeg = _square_photos(photos_dir, 1)[0].read_bytes()
    ok = {"Authorization": f"Bearer {API_KEY}"}
    open_paths = ("/livez", "/healthz", "/readyz", "/metrics", "/demo", "/static/demo.js", "/docs.json")
    for path in (*open_paths, "/openapi.json", "/examples", "/"):
        assert auth_server.get(path).status_code == 200, path  # open without a key
    assert auth_server.get("/examples").json() == {"examples": []}  # FERFLOW_EXAMPLES_DIR absent
    for path in ("/predict", "/classify", "/predict_batch", "/classify_batch"):
        _assert_error(auth_server.post(path, **_files(jpeg)), {401}, "missing API key")
        r = auth_server.post(path, **_files(jpeg), headers={"Authorization": "Bearer nope"})
        _assert_error(r, {401}, "wrong API key")
        assert r.headers["www-authenticate"].startswith("Bearer")
    _assert_error(auth_server.post("/predict", **_files(jpeg), headers={"Authorization": API_KEY}), {401}, "")
    _assert_error(auth_server.get("/model"), {401}, "missing")
    r = auth_server.post("/predict", **_files(jpeg), headers=ok)
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    r = auth_server.post("/classify", **_files(jpeg), headers=ok)
    assert r.status_code == 200 and r.json()["label"] in r.json()["scores"]
    assert auth_server.get("/model", headers=ok).json()["limits"]["max_upload_bytes"] == 200 * 1024
    # FERFLOW_MAX_UPLOAD_BYTES / FERFLOW_MAX_PIXELS from the environment
    noisy = Image.fromarray((np.random.default_rng(1).random((400, 400, 3)) * 255).astype(np.uint8))
    big = _encode(noisy, "PNG")
    assert len(big) > 200 * 1024
    _assert_error(auth_server.post("/predict", **_files(big, "n.png"), headers=ok), {413}, "limit")
    wide = _encode(Image.new("L", (2000, 1001)), "PNG")
    _assert_error(auth_server.post("/predict", **_files(wide, "w.png"), headers=ok), {413}, "2,000,000")
    assert auth_server.get("/livez").status_code == 200


def test_no_tensorflow_in_the_server(server: Server) -> None:
    mapped = set()
    for proc in server.processes():
        mapped |= {m.path for m in proc.memory_maps()}
    assert any("onnxruntime" in p for p in mapped)  # the check sees the worker's libraries
    # OpenVINO maps its own TensorFlow *model-format reader* (openvino/frontend/tensorflow); that
    # is not TensorFlow. TensorFlow itself lives in site-packages/tensorflow.
    assert not [p for p in mapped if "site-packages/tensorflow" in p or "libtensorflow" in p]
    assert "tensorflow imported: False" in server.log.read_text()


def test_http_labels_equal_offline_labels(server: Server, ferplus_dir: Path, model_path: Path) -> None:
    """300 real FERPlus test crops through /classify (micro-batched) and offline agree."""
    files = sorted((ferplus_dir / "FER2013Valid").glob("*.png"))[:300]
    pixels = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    offline = FerClassifier(model_path).predict_proba(pixels)

    async def run() -> list[dict]:
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def one(f: Path) -> dict:
                async with sem:
                    r = await client.post("/classify", files={"image": (f.name, f.read_bytes(), "image/png")})
                    assert r.status_code == 200, r.text
                    return r.json()

            return await asyncio.gather(*(one(f) for f in files))

    answers = asyncio.run(run())
    classes = list(answers[0]["scores"])
    http = np.array([[a["scores"][c] for c in classes] for a in answers])
    assert [a["label"] for a in answers] == [classes[i] for i in offline.argmax(1)]
    np.testing.assert_allclose(http, offline, atol=1e-4)
    metrics = {
        line.split()[0]: float(line.split()[1])
        for line in server.get("/metrics").text.splitlines()
        if line.startswith("ferflow_classify_batch_size_")
    }
    faces, calls = metrics["ferflow_classify_batch_size_sum"], metrics["ferflow_classify_batch_size_count"]
    assert faces >= len(files), metrics
    assert calls < faces, f"/classify never batched concurrent requests: {metrics}"


def test_classify_batch_uses_bentoml_adaptive_batching(
    server: Server, ferplus_dir: Path, model_path: Path
) -> None:
    """The array endpoint: JSON uint8 crops in, probabilities out, through BentoML's dispatcher."""
    files = sorted((ferplus_dir / "FER2013Valid").glob("*.png"))[300:308]
    pixels = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    r = server.post("/classify_batch", json={"faces": pixels.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()), FerClassifier(model_path).predict_proba(pixels), atol=1e-4)
    batches = [
        line
        for line in server.get("/metrics").text.splitlines()
        if line.startswith("bentoml_service_adaptive_batch_size_count")
    ]
    assert batches, "classify_batch did not go through BentoML's adaptive batching"


FAKE_CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]

# The demo's tracker on known inputs: [track ids, smoothed probabilities, live track ids] per step.
DEMO_TRACKER_STEPS = """() => {
  const t = new ferflowDemo.Tracker();
  const step = (boxes, time, probs) => {
    const ids = t.update(boxes, time);
    const smooth = probs ? t.smooth(ids[0], probs, time) : null;
    return [ids, smooth, [...t.tracks.keys()]];
  };
  return [
    step([[0, 0, 100, 100]], 0, [1, 0]),
    step([[50, 0, 100, 100], [300, 300, 50, 50]], 0.5, [0, 1]),  // IoU 1/3: the same face
    step([[300, 300, 50, 50], [110, 0, 100, 100]], 1.2, null),  // IoU 1/4 with [50, 0]: a new face
    step([[50, 0, 100, 100]], 1.8, [0, 1]),  // track 0, unmatched for 1.3 s, is gone
  ];
}"""


# The legend colours found on the timeline canvas (pixels of exactly a line's colour).
TIMELINE_COLOURS = """() => {
  const legend = [...document.querySelectorAll('#legend .item')];
  const colours = legend.map((e) => e.style.getPropertyValue('--colour').trim().toLowerCase());
  const c = document.getElementById('timeline');
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const hex = (i) => '#' + [0, 1, 2].map((k) => px[i + k].toString(16).padStart(2, '0')).join('');
  const seen = new Set();
  for (let i = 0; i < px.length; i += 4) if (px[i + 3] === 255 && colours.includes(hex(i))) seen.add(hex(i));
  return [...seen];
}"""


# Images the page shows without a picture: no src, or a src that failed (the broken-image icon).
BROKEN_IMAGES = """() => [...document.images]
  .filter((i) => i.getClientRects().length && (!i.getAttribute('src') || (i.complete && !i.naturalWidth)))
  .map((i) => i.id || i.alt)"""

# Each face tag's rectangle against the photo frame's: true when it lies inside.
TAGS_INSIDE = """() => {
  const f = document.getElementById('frame').getBoundingClientRect();
  return [...document.querySelectorAll('#overlay .tag')].map((t) => {
    const r = t.getBoundingClientRect();
    const e = 0.5;
    return r.left >= f.left - e && r.right <= f.right + e && r.top >= f.top - e && r.bottom <= f.bottom + e;
  });
}"""


# An example's result is on the page: its JSON is offered for download.
EXAMPLE_SHOWN = "(name) => ((d) => !d.hidden && d.download === name)(document.getElementById('download'))"


def _fake_camera_y4m(video: Path, out: Path, max_frames: int = 72) -> Path:
    """The frames of ``video`` as a raw Y4M (4:2:0) clip, Chromium's fake camera input (looped)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    fps = round(cap.get(cv2.CAP_PROP_FPS)) or 30
    frames = []
    while len(frames) < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[: bgr.shape[0] // 2 * 2, : bgr.shape[1] // 2 * 2])
    cap.release()
    assert frames, f"no frames in {video}"
    height, width = frames[0].shape[:2]
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for bgr in frames:  # I420: the Y plane, then U and V at half resolution
            f.write(b"FRAME\n" + cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
    return out


def test_demo_page_in_headless_chromium(
    server: Server, auth_server: Server, photos_dir: Path, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = _square_photos(photos_dir, 1)[0]
    clip = photos_dir.parent / "video" / "single_face.mp4"  # one face, neutral to smiling
    if not clip.is_file():
        pytest.skip(f"no sample clip at {clip}")
    camera = _fake_camera_y4m(clip, tmp_path / "camera.y4m")  # the webcam mode's fake camera
    args = [*CHROMIUM_ARGS, *FAKE_CAMERA_ARGS, f"--use-file-for-fake-video-capture={camera}"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            def box_smooth(page) -> str | None:
                return page.locator("#overlay .box").first.get_attribute("data-smooth-label")

            page.goto(server.url + "/demo")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.wait_for_selector("#example-list button img")
            assert page.evaluate(BROKEN_IMAGES) == [] and page.locator("#stage").is_hidden()
            assert page.locator("#download").is_hidden()
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#overlay .box", timeout=30_000)
            boxes = page.locator("#overlay .box")
            assert boxes.count() == 1
            label = boxes.first.get_attribute("data-label")
            assert label in page.locator("#model").text_content()
            assert boxes.first.bounding_box()["width"] > 20  # drawn over the photo, not collapsed
            assert label in boxes.first.text_content()
            card = page.locator("#faces .face").first
            assert card.get_attribute("data-label") == label
            n_classes = len(json.loads(httpx.get(server.url + "/model").text)["classes"])
            assert card.locator(".bar").count() == n_classes
            assert "1 face" in page.locator("#status").text_content()
            assert page.locator("#live").is_hidden() and box_smooth(page) is None
            # the result as a JSON file: the server's answer for this photo
            with page.expect_download() as download:
                page.click("#download")
            assert download.value.suggested_filename == f"{photo.stem}.ferflow.json"
            saved = json.loads(Path(download.value.path()).read_text())
            assert saved == server.post("/predict", **_files(photo.read_bytes(), photo.name)).json()

            # the tracker and the moving average on known inputs (tau 0.5 s, IoU >= 0.3, 1 s gap)
            steps = page.evaluate(DEMO_TRACKER_STEPS)
            assert [ids for ids, _, _ in steps] == [[0], [0, 1], [1, 2], [3]]
            assert [live for _, _, live in steps] == [[0], [0, 1], [0, 1, 2], [1, 2, 3]]
            w = 1 - np.exp(-0.5 / 0.5)
            np.testing.assert_allclose(steps[1][1], [1 - w, w], atol=1e-9)
            np.testing.assert_allclose(steps[3][1], [0, 1])  # a new track starts unsmoothed

            # webcam mode on Chromium's fake camera playing a real face: smoothed labels, timeline
            classes = json.loads(httpx.get(server.url + "/model").text)["classes"]
            page.click("#webcam")
            page.wait_for_selector("#overlay .box[data-smooth-label]", timeout=60_000)
            page.wait_for_function(
                "Number(document.getElementById('timeline').dataset.points) >= 8", timeout=60_000
            )
            box = page.locator("#overlay .box").first
            smooth_label = box_smooth(page)
            assert smooth_label in classes and box.get_attribute("data-label") in classes
            assert box.get_attribute("data-track") is not None
            assert page.locator("#faces .face .raw").first.is_visible()
            assert page.locator("#live").is_visible()
            assert page.locator("#legend .item").all_text_contents() == classes
            points = page.evaluate("ferflowDemo.timeline.points.filter((p) => p.smooth)")
            assert len(points) >= 8
            for prev, cur in (points[i - 1 : i + 1] for i in range(1, len(points))):
                raw, smooth, before = (np.array(cur["raw"]), np.array(cur["smooth"]), prev["smooth"])
                assert raw.shape == smooth.shape == (len(classes),) and abs(smooth.sum() - 1) < 1e-3
                if cur["track"] == prev["track"]:  # the EMA recurrence, frame to frame
                    w = 1 - np.exp(-(cur["t"] - prev["t"]) / 0.5)
                    np.testing.assert_allclose(smooth, (1 - w) * np.array(before) + w * raw, atol=1e-9)
            assert len({p["track"] for p in points}) < len(points)  # one face tracked across frames
            assert max(np.abs(np.array(p["smooth"]) - p["raw"]).max() for p in points) > 0.01
            assert len(set(page.evaluate(TIMELINE_COLOURS))) >= 2  # lines in the legend's colours
            page.click("#webcam")  # stop
            assert page.locator("#webcam").text_content() == "Use the webcam"

            # back to a photo: raw labels again, no timeline
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#overlay .box:not([data-smooth-label])", timeout=30_000)
            assert page.locator("#overlay .box").first.get_attribute("data-label") == label
            assert "1 face" in page.locator("#status").text_content()
            assert box_smooth(page) is None and page.locator("#live").is_hidden()
            # a bad file shows the server's error message instead of boxes
            page.set_input_files("#file", [{"name": "x.png", "mimeType": "image/png", "buffer": b"text"}])
            page.wait_for_function("document.getElementById('status').classList.contains('error')")
            assert "not a JPEG" in page.locator("#status").text_content()
            assert page.evaluate(BROKEN_IMAGES) == [] and page.locator("#stage").is_hidden()
            assert page.locator("#download").is_hidden()

            # example photos (from the shared folder): each button analyses its photo; a small
            # one is shown at least 320 px on its longer side with its face tags inside it
            examples = page.locator("#example-list button")
            names = [examples.nth(i).get_attribute("data-example") for i in range(examples.count())]
            assert 3 <= len(names) <= 4 and page.locator("#no-examples").is_hidden()
            for i, name in enumerate(names):
                examples.nth(i).click()
                stem = name.rsplit(".", 1)[0]
                page.wait_for_function(EXAMPLE_SHOWN, arg=f"{stem}.ferflow.json")
                assert page.locator("#overlay .box").count() >= 1, name
                assert page.evaluate(TAGS_INSIDE) == [True] * page.locator("#overlay .tag").count(), name
                shown = page.locator("#photo").bounding_box()
                natural = Image.open(photos_dir / name).size
                assert max(shown["width"], shown["height"]) >= min(320, max(natural)) - 1, (name, shown)
            assert min(Image.open(photos_dir / n).size[0] for n in names) < 160  # a small one was shown

            # a server without the example folder says so
            other = browser.new_page()
            other.goto(auth_server.url + "/demo")
            other.wait_for_selector("#no-examples:not([hidden])")
            assert other.locator("#example-list button").count() == 0 and other.evaluate(BROKEN_IMAGES) == []
            assert not errors, errors
        finally:
            browser.close()


# --- video tasks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips() -> Path:
    if not (VIDEO / "single_face.mp4").is_file():
        pytest.skip(f"no sample clips at {VIDEO}")
    return VIDEO


def _video(path: Path, **fields: str) -> dict:
    return {"files": {"video": (path.name, path.read_bytes(), "video/mp4")}, "data": fields}


def _wait(server: Server, task_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.get(f"/analyze_video/status?task_id={task_id}").json()
        if status["status"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not {states} in {timeout} s: {status}")


def _looped(clip: Path, times: int, out: Path) -> Path:
    import cv2

    probe = cv2.VideoCapture(str(clip))
    fps, size = probe.get(cv2.CAP_PROP_FPS), (int(probe.get(3)), int(probe.get(4)))
    probe.release()
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for _ in range(times):
        src = cv2.VideoCapture(str(clip))
        while (frame := src.read()[1]) is not None:
            writer.write(frame)
        src.release()
    writer.release()
    return out


def test_analyze_video_is_a_task_whose_rows_match_ferflow_analyze(server: Server, clips: Path) -> None:
    import pandas as pd

    from ferflow.footage import AnalyzeConfig, analyze

    r = server.post("/analyze_video", **_video(clips / "single_face.mp4", fps="10", smooth="0.25"))
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["status"] == "pending" and task["video"]["width"] == 640 and task["frames_total"] == 72
    status = _wait(server, task["task_id"], {"completed", "failed"})
    assert status["status"] == "completed" and status["frames_done"] == 72, status
    result = server.get(task["get_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    body = result.json()
    rows = pd.DataFrame(body["rows"], columns=body["columns"])
    offline = analyze(clips / "single_face.mp4", config=AnalyzeConfig(fps=10, smooth_s=0.25, progress=False))
    assert list(rows["frame"]) == list(offline["frame"]) and list(rows["label"]) == list(offline["label"])
    assert list(rows["smooth_label"]) == list(offline["smooth_label"])  # one predict path
    assert (rows["source"] == "single_face.mp4").all() and set(body["summary"]) == {"single_face.mp4#0"}
    table = pd.read_csv(io.StringIO(server.get(task["get_url"] + "&format=csv").text))
    assert list(table.columns) == body["columns"] and len(table) == len(rows)
    assert not list((server.tasks / task["task_id"]).glob("upload*"))  # the video is not kept


def test_a_long_video_task_leaves_photos_answering_and_can_be_cancelled(
    server: Server, clips: Path, photos_dir: Path, tmp_path: Path
) -> None:
    long = _looped(clips / "WolfgangLanger_Pexels.mp4", 6, tmp_path / "long.mp4")  # 2,832 frames
    task = server.post("/analyze_video", **_video(long)).json()
    while _wait(server, task["task_id"], {"in_progress"})["frames_done"] == 0:
        time.sleep(0.1)  # until the analysis is under way
    jpeg = _square_photos(photos_dir, 1)[0].read_bytes()
    started = time.perf_counter()
    for _ in range(5):
        assert server.post("/predict", **_files(jpeg)).status_code == 200
    took = time.perf_counter() - started
    status = server.get(task["status_url"]).json()
    assert status["status"] == "in_progress" and 0 < status["frames_done"] < 2832, status
    assert took < 5.0, f"5 photos took {took:.2f} s while a video was analysed"
    _assert_error(server.get(task["get_url"]), {409}, "not completed")
    assert server.put(task["cancel_url"]).status_code == 200
    assert _wait(server, task["task_id"], {"canceled"}, timeout=10)["status"] == "canceled"
    assert not list((server.tasks / task["task_id"]).glob("upload*"))
    _assert_error(server.get(task["get_url"]), {409}, "canceled")


def test_bad_videos_and_requests_get_a_4xx_naming_the_fault(
    server: Server, auth_server: Server, clips: Path, tmp_path: Path
) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    _assert_error(server.post("/analyze_video", **_video(text)), {415}, "video (notes.mp4): not a readable")
    _assert_error(server.post("/analyze_video", **_files(b"x", field="image")), {400}, "field 'video'")
    r = server.post("/analyze_video", **_video(clips / "single_face.mp4", fps="fast"))
    _assert_error(r, {400}, "form field 'fps'")
    _assert_error(server.get("/analyze_video/status?task_id=../../etc"), {404}, "not found")
    _assert_error(server.get("/analyze_video/get"), {404}, "not found")
    ok = {"Authorization": f"Bearer {API_KEY}"}
    r = auth_server.post("/analyze_video", **_video(clips / "WolfgangLanger_Pexels.mp4"), headers=ok)
    _assert_error(r, {413}, "exceeds the limit of")  # FERFLOW_MAX_VIDEO_BYTES, from Content-Length
    r = auth_server.post("/analyze_video", **_video(clips / "single_face.mp4"), headers=ok)
    _assert_error(r, {413}, "over the limit of 2 s")  # FERFLOW_MAX_VIDEO_SECONDS, from the container
    _assert_error(auth_server.post("/analyze_video", **_video(clips / "no_face.mp4")), {401}, "API key")
    assert server.get("/livez").status_code == 200 and auth_server.get("/livez").status_code == 200


# --- limits on /classify_batch, slow clients, memory, error shape -----------------------------


def _worker(server: Server) -> psutil.Process:
    """The BentoML worker process (the one that holds the model)."""
    workers = [p for p in server.processes() if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in server.processes()]
    return workers[0]


def _assert_shaped(r: httpx.Response, status: int, words: str) -> None:
    """The common error shape, with the request id of the response header."""
    _assert_error(r, {status}, words)
    assert set(r.json()) == {"error", "status", "type", "request_id"}, r.json()
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_bentoml_batch_wait_estimate_ignores_time_queued_behind_other_batches(monkeypatch) -> None:
    """The dispatcher holds a lone request about as long as batches waited on average; waits
    spent queued behind other batches (a large request split in 64s) must not count."""
    from bentoml._internal.marshal.dispatcher import Optimizer

    from serving import bentoml_fixes

    def estimate() -> float:
        opt = Optimizer(max_latency=5.0)
        for _ in range(60):  # jobs of a 5,000-crop request: 0.02 s each, queued up to 3 s
            opt.log_outbound(n=1, wait=3.0, duration=0.02)
        opt.trigger_refresh()
        return opt.wait

    assert bentoml_fixes.apply()
    assert estimate() < 0.021
    monkeypatch.setattr(Optimizer, "log_outbound", bentoml_fixes.upstream_log_outbound())
    assert estimate() > 2.5  # BentoML as shipped: every lone request then waits ~3 s


def test_classify_batch_parsing_names_the_fault() -> None:
    from serving.classify_batch import parse_faces

    crop = [[128] * 48] * 48
    ok = parse_faces(json.dumps({"faces": [crop, crop]}).encode(), 10)
    assert ok.shape == (2, 48, 48) and ok.dtype == np.uint8
    bad_row = [*crop[:3], [*crop[3][:5], 300, *crop[3][6:]], *crop[4:]]
    cases = [
        (b"{", InferenceError, "malformed JSON"),
        (b"[1, 2]", InferenceError, "no field 'faces'"),
        (json.dumps({"faces": []}).encode(), InferenceError, "empty"),
        (
            json.dumps({"faces": [crop, bad_row]}).encode(),
            InferenceError,
            r"faces\[1\]\[3\]\[5\]: 300",
        ),
        (json.dumps({"faces": [[[-5] * 48] * 48]}).encode(), InferenceError, "-5 is not"),
        (json.dumps({"faces": [[["a"] * 48] * 48]}).encode(), InferenceError, '"a" is not'),
        (json.dumps({"faces": [[[1.5] * 48] * 48]}).encode(), InferenceError, "1.5 is not"),
        (json.dumps({"faces": [[[1] * 47] * 48]}).encode(), InferenceError, "expected 48 values"),
        (json.dumps({"faces": [crop] * 11}).encode(), PayloadTooLarge, "11 faces"),
    ]
    for body, error, words in cases:
        with pytest.raises(error, match=words):
            parse_faces(body, 10)


def test_decode_reduces_a_large_png_before_its_rgb_copy() -> None:
    """A 4999x4999 PNG of ~70 KB: decoded for detection at half size, for /classify at 1/13."""
    from ferflow.inference import face_from_bytes

    png = _encode(Image.new("L", (4999, 4999), 90))
    assert len(png) < 100_000
    rgb, scale = decode_image(png, ImageLimits(), max_side=2048)
    assert rgb.shape == (2500, 2500, 3) and abs(scale - 4999 / 2500) < 1e-6
    assert face_from_bytes(png).shape == (48, 48)
    small = _encode(Image.new("RGB", (1000, 800), (1, 2, 3)))
    assert decode_image(small, ImageLimits(), max_side=2048)[0].shape == (800, 1000, 3)  # unchanged


def _gate_call(config, app, method: str = "POST", path: str = "/x", body_parts=(b"",), delay: float = 0.0):
    """Run ``RequestGate(app, config)`` on one request: (status, headers, JSON body or bytes)."""
    from serving.gate import RequestGate

    async def main():
        parts = list(body_parts)
        sent: list[dict] = []

        async def receive() -> dict:
            if parts:
                await asyncio.sleep(delay)
                chunk = parts.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(parts)}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": [(b"x-request-id", b"abc-1")]}
        await RequestGate(app, config)(scope, receive, send)
        return sent

    sent = asyncio.run(main())
    headers = dict(sent[0]["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return (
        sent[0]["status"],
        headers,
        json.loads(body) if b"json" in headers.get(b"content-type", b"") else body,
    )


def test_gate_deadline_limits_and_error_shape(caplog) -> None:
    from serving.gate import GateConfig

    async def echo(scope, receive, send) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def plain_404(scope, receive, send) -> None:
        await send(
            {"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"Not Found"})

    async def broken(scope, receive, send) -> None:
        raise RuntimeError("boom")

    cfg = GateConfig(body_limits={"/x": 10}, body_timeout_s=0.3, max_concurrency=4)
    status, headers, body = _gate_call(cfg, echo, body_parts=(b"abc", b"de"))
    assert (status, body, headers[b"x-request-id"]) == (200, b"abcde", b"abc-1")
    status, headers, body = _gate_call(cfg, echo, body_parts=(b"a", b"b", b"c"), delay=0.2)  # a slow client
    assert status == 408 and "0.3 s" in body["error"] and headers[b"connection"] == b"close"
    status, _, body = _gate_call(cfg, echo, body_parts=(b"0123456789", b"x"))
    assert status == 413 and body["type"] == "PayloadTooLarge"
    status, _, body = _gate_call(cfg, plain_404, method="GET", path="/nope")
    assert status == 404 and body == {
        "error": "Not Found",
        "status": 404,
        "type": "NotFound",
        "request_id": "abc-1",
    }
    with caplog.at_level(logging.ERROR, logger="bentoml.ferflow"):
        status, _, body = _gate_call(cfg, broken)
    assert status == 500 and "abc-1" in body["error"] and body["request_id"] == "abc-1"
    assert any("abc-1" in r.getMessage() and r.exc_info for r in caplog.records)
    full = GateConfig(body_limits={"/x": 10}, body_timeout_s=0.3, max_concurrency=0)
    status, _, body = _gate_call(full, echo)
    assert status == 429 and body["type"] == "TooManyRequests"


def test_classify_batch_bad_input_is_a_4xx_naming_the_fault(server: Server) -> None:
    crop = [[128] * 48] * 48
    cases = [
        ("strings", dict(json={"faces": [[["x"] * 48] * 48]}), 400, "faces[0][0][0]"),
        ("300", dict(json={"faces": [crop, [[300] * 48] * 48]}), 400, "faces[1][0][0]: 300"),
        ("-5", dict(json={"faces": [[[-5] * 48] * 48]}), 400, "0..255"),
        ("a flat list", dict(json={"faces": [1, 2, 3]}), 400, "faces[0]"),
        ("no faces field", dict(json={"crops": [crop]}), 400, "'faces'"),
        (
            "malformed JSON",
            dict(content=b"{", headers={"content-type": "application/json"}),
            400,
            "malformed",
        ),
        ("multipart", _files(_encode(Image.new("L", (48, 48)))), 415, "multipart/form-data"),
    ]
    for name, kwargs, status, words in cases:
        try:
            _assert_shaped(server.post("/classify_batch", **kwargs), status, words)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    r = server.post("/classify_batch", json={"faces": [crop]})
    assert r.status_code == 200 and len(r.json()) == 1


def test_classify_batch_refuses_a_huge_body_before_parsing_it(server: Server) -> None:
    worker = _worker(server)
    before = worker.memory_info().rss
    body = json.dumps({"faces": [[[128] * 48] * 48] * 10_000}, separators=(",", ":")).encode()  # 46 MB
    started = time.perf_counter()
    r = server.post("/classify_batch", content=body, headers={"content-type": "application/json"})
    _assert_shaped(r, 413, "exceeds the limit")
    assert time.perf_counter() - started < 5
    assert worker.memory_info().rss - before < 100 * 2**20
    many = json.dumps({"faces": [[[0] * 48] * 48] * 1025}, separators=(",", ":")).encode()
    r = server.post("/classify_batch", content=many, headers={"content-type": "application/json"})
    _assert_shaped(r, 413, "1,025 faces in one request; at most 1,024")


def test_errors_are_json_with_a_request_id(server: Server) -> None:
    r = server.get("/no-such-page")
    _assert_shaped(r, 404, "not found")
    r = server.get("/no-such-page", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42" and r.json()["request_id"] == "trace-42"
    assert server.get("/livez").headers["x-request-id"]
    _assert_shaped(server.post("/predict", content=b"x", headers={"content-type": "text/plain"}), 415, "")


@pytest.fixture(scope="module")
def slow_server(model_path: Path, tmp_path_factory) -> Iterator[Server]:
    """``bentoml serve`` with a 2 s body deadline, 16 requests at once and 5,000-crop batches."""
    port = _free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:FERService"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    home = tmp_path_factory.mktemp("slow")
    env = _env(model_path, BENTOML_HOME=str(home / "bentoml"), FERFLOW_BODY_TIMEOUT_S="2")
    env.update(FERFLOW_MAX_CONCURRENCY="16", FERFLOW_MAX_CLASSIFY_BATCH_FACES="5000")
    srv = _start(cmd, env, port, home / "server.log")
    yield srv
    _stop(srv)


def test_one_large_classify_batch_leaves_single_crops_fast(slow_server: Server) -> None:
    crop = [[128] * 48] * 48
    r = slow_server.post("/classify_batch", json={"faces": [crop] * 5000})
    assert r.status_code == 200 and len(r.json()) == 5000
    took = []
    end = time.monotonic() + 12  # BentoML refreshes its estimate at most every 5 s
    while time.monotonic() < end:
        started = time.perf_counter()
        assert slow_server.post("/classify_batch", json={"faces": [crop]}).status_code == 200
        took.append(time.perf_counter() - started)
        time.sleep(0.5)
    assert sorted(took[-5:])[2] < 0.3 and max(took[-5:]) < 1.0, took


async def _slow_client(port: int, seconds: float, declared: int, sent: int | None) -> str:
    """A POST /classify whose body trickles (a byte per 0.5 s; or ``sent`` bytes, then silence):
    the status line the server answered, or '' if none within ``seconds``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    writer.write(head.encode() + (b"x" * sent if sent else b""))
    line = asyncio.ensure_future(reader.readline())
    deadline = time.monotonic() + seconds
    try:
        while not line.done() and time.monotonic() < deadline:
            if sent is None:
                writer.write(b"x")
            await asyncio.wait([line], timeout=0.5)
        return line.result().decode().strip() if line.done() else ""
    except (ConnectionError, OSError):
        return "closed"
    finally:
        line.cancel()
        writer.close()


def test_slow_clients_get_408_and_do_not_block_others(slow_server: Server, ferplus_dir: Path) -> None:
    """32 slow uploads (twice the concurrency limit) for 10 s: each gets 408 after the 2 s
    deadline, and normal requests meanwhile are all answered."""
    port = int(slow_server.url.rsplit(":", 1)[1])
    crop = sorted((ferplus_dir / "FER2013Valid").glob("*.png"))[0].read_bytes()

    async def normal(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        end = time.monotonic() + 8
        while time.monotonic() < end:
            r = await client.post("/classify", files={"image": ("c.png", crop, "image/png")})
            statuses.append(r.status_code)
            await asyncio.sleep(0.1)
        return statuses

    async def main() -> tuple[list[str], list[int], int]:
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=30) as client:
            slow = [_slow_client(port, 10, 100_000, None) for _ in range(31)]
            slow.append(_slow_client(port, 10, 100_000, 5_000))  # declares more than it sends
            await asyncio.sleep(0)
            tasks = [asyncio.ensure_future(c) for c in slow]
            await asyncio.sleep(0.5)
            ok = await normal(client)
            ready = (await client.get("/readyz")).status_code
            return await asyncio.gather(*tasks), ok, ready

    lines, ok, ready = asyncio.run(main())
    assert all(line.startswith("HTTP/1.1 408") for line in lines), lines
    assert ok and set(ok) == {200}, ok
    assert ready == 200


def test_large_png_uploads_stay_within_memory(server: Server) -> None:
    """8 concurrent 4999x4999 RGB PNGs (~80 KB each, under the 25 MP limit) on /predict: the
    worker stays within 400 MB of its baseline and returns to within 10 % of it."""
    png = _encode(Image.new("RGB", (4999, 4999), (90, 120, 150)))
    worker = _worker(server)
    baseline = worker.memory_info().rss
    peak = baseline

    async def main() -> list[int]:
        nonlocal peak
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            posts = [client.post("/predict", **_files(png, "big.png", "image/png")) for _ in range(8)]
            pending = [asyncio.ensure_future(p) for p in posts]
            while not all(p.done() for p in pending):
                peak = max(peak, worker.memory_info().rss)
                await asyncio.sleep(0.05)
            return [p.result().status_code for p in pending]

    assert asyncio.run(main()) == [200] * 8
    time.sleep(0.5)
    after = worker.memory_info().rss
    mb = 2**20
    assert peak - baseline < 400 * mb, (baseline // mb, peak // mb)
    assert after < baseline * 1.10, (baseline // mb, after // mb)
