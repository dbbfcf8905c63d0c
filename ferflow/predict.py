"""Inference from an exported ONNX model (OpenVINO or ONNX Runtime). Never imports TensorFlow.

    clf = FerClassifier()                         # the committed reference model
    probs = clf.predict_proba(faces)              # faces: uint8 (N, 48, 48) grayscale crops
    names = clf.predict(faces)                    # class names

The class names and the input contract travel inside the ONNX file (``metadata_props``), so
a model file is self-describing.

Runtime (``runtime=`` or ``FERFLOW_RUNTIME``). The reference is the graph as written, run by
ONNX Runtime with no graph optimisation: quantised layers run as dequantise → float op →
quantise, so the result does not depend on the CPU's instruction set. Fast paths must agree with
it on a probe batch, row by row and batched, before they serve:

- OpenVINO (``auto`` tries it first). It has mis-computed a quantised graph before (see
  ``ferflow.export.FLOAT_SCOPES``).
- ONNX Runtime's fused int8 kernels. On x86 CPUs without VNNI they multiply u8 by s8 with
  ``VPMADDUBSW``, whose 16-bit sums saturate: on an AMD EPYC without AVX-512 the reference model
  lost 2.6 points of FER2013Valid that way. When they disagree, ONNX Runtime runs the graph as
  written (slower) and ``fallback_reason`` says why.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ferflow.config import RUNTIME_ENV, Runtime, TestTimeAugmentation
from ferflow.preprocess import softmax, to_model_input

logger = logging.getLogger(__name__)

PROBE_FACES = 16
# largest |p_fast - p_reference| allowed on the probe batch. Kernels that compute the graph
# correctly differ from it by rounding only (OpenVINO int8 on an AMD EPYC without VNNI: 0.038);
# ONNX Runtime's saturating u8s8 kernels on the same CPU: 0.161
PROBE_MAX_PROB_DIFF = 0.08

_CHECKOUT_REFERENCE = Path(__file__).resolve().parents[1] / "models" / "reference" / "model.onnx"
_PACKAGED_REFERENCE = Path(__file__).resolve().parent / "reference" / "model.onnx"  # in the wheel
REFERENCE_MODEL = _CHECKOUT_REFERENCE if _CHECKOUT_REFERENCE.is_file() else _PACKAGED_REFERENCE
"""The committed reference model (``models/reference``, shipped inside the wheel too);
``FERFLOW_MODEL`` overrides it."""


def default_model_path() -> Path:
    return Path(os.environ.get("FERFLOW_MODEL", REFERENCE_MODEL))


def _ort_session(path: Path, threads: int, optimised: bool):
    """An ONNX Runtime CPU session. ``optimised=False`` runs the graph as written: no fused int8
    kernels, so its results do not depend on the CPU's instruction set (the probe's reference)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimised else level.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _probe_faces() -> np.ndarray:
    """Smooth seeded noise, (PROBE_FACES, 48, 48, 1): no image data ships with the package."""
    coarse = np.random.default_rng(0).random((PROBE_FACES, 6, 6), dtype=np.float32)
    return np.kron(coarse, np.ones((8, 8), dtype=np.float32))[..., None]


def _disagreement(
    name: str, run: Callable[[np.ndarray], np.ndarray], faces: np.ndarray, expected: np.ndarray
) -> str | None:
    """Why ``run`` may not stand in for the graph as written, or None if it may: each probe face
    goes through it alone and in one batch."""
    batched = softmax(run(faces))
    alone = softmax(np.concatenate([run(faces[i : i + 1]) for i in range(len(faces))]))
    worst = max(np.abs(batched - expected).max(), np.abs(alone - expected).max())
    if not np.isfinite(worst) or worst > PROBE_MAX_PROB_DIFF:
        return (
            f"on {PROBE_FACES} probe faces the probabilities of {name} differ from the graph's "
            f"by up to {worst:.3f} (allowed {PROBE_MAX_PROB_DIFF})"
        )
    return None


class FerClassifier:
    """An ONNX facial-expression classifier; thread count defaults to the usable cores."""

    def __init__(
        self,
        path: str | Path | None = None,
        threads: int | None = None,
        tta: str | TestTimeAugmentation | None = None,
        runtime: str | Runtime | None = None,
    ):
        """``tta``: test-time augmentation; ``None`` follows the model's ``tta`` metadata.
        ``runtime``: ``None`` reads ``FERFLOW_RUNTIME`` (default ``auto``)."""
        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} does not exist")
        if threads is None:
            try:
                threads = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover
                threads = os.cpu_count() or 1
        try:
            self.session = _ort_session(self.path, threads, optimised=True)
        except Exception as err:
            raise ValueError(f"{self.path} is not a loadable ONNX model: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta:
            raise ValueError(f"{self.path}: ONNX metadata has no 'classes' (not a ferflow export)")
        self.classes: list[str] = json.loads(meta["classes"])
        self.metadata = dict(meta)
        self.input_name = self.session.get_inputs()[0].name
        chosen = tta if tta is not None else meta.get("tta", TestTimeAugmentation.NONE.value)
        try:
            self.tta = TestTimeAugmentation(chosen)
        except ValueError:
            known = ", ".join(t.value for t in TestTimeAugmentation)
            source = "argument tta" if tta is not None else f"{self.path}: metadata 'tta'"
            raise ValueError(f"{source}={chosen!r} is not one of {known}") from None
        self._infer = self._onnxruntime
        self.runtime = Runtime.ONNXRUNTIME
        self.fallback_reason: str | None = None
        self._select_runtime(runtime, threads)

    def _select_runtime(self, runtime: str | Runtime | None, threads: int) -> None:
        chosen = runtime if runtime is not None else os.environ.get(RUNTIME_ENV, Runtime.AUTO.value)
        try:
            wanted = Runtime(chosen)
        except ValueError:
            known = ", ".join(r.value for r in Runtime)
            source = "argument runtime" if runtime is not None else RUNTIME_ENV
            raise ValueError(f"{source}={chosen!r} is not one of {known}") from None
        as_written = _ort_session(self.path, threads, optimised=False)
        faces = _probe_faces()
        expected = softmax(as_written.run(None, {self.input_name: faces})[0])
        if wanted is not Runtime.ONNXRUNTIME:
            try:
                engine = _OpenVINO(self.path, threads)
                problem = _disagreement("OpenVINO", engine.run, faces, expected)
            except ImportError:
                problem = "the openvino package is not installed"
            except Exception as err:  # a graph OpenVINO cannot compile: ONNX Runtime still can
                problem = f"OpenVINO cannot compile it: {err}"
            if problem is None:
                self._engine, self._infer, self.runtime = engine, engine.run, Runtime.OPENVINO
                self.session = None  # metadata and the probe are read; its memory is not needed
                return
            if wanted is Runtime.OPENVINO:
                raise ValueError(f"{self.path}: runtime openvino refused: {problem}")
            self.fallback_reason = problem
        fused = _disagreement("ONNX Runtime's fused kernels", self._onnxruntime, faces, expected)
        if fused is not None:
            self.session = as_written
            reasons = [self.fallback_reason, fused, "ONNX Runtime runs the graph as written (slower)"]
            self.fallback_reason = "; ".join(r for r in reasons if r)
        if self.fallback_reason:
            logger.warning("%s: serving with ONNX Runtime: %s", self.path, self.fallback_reason)

    def _onnxruntime(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for model inputs ``x`` (float32 ``(N, 48, 48, 1)`` in ``[0, 1]``).

        With ``tta == hflip`` each face and its mirror image go through the model in one batch
        and their logits are averaged.
        """
        out = []
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            if self.tta is TestTimeAugmentation.HFLIP:
                pair = np.concatenate([chunk, chunk[:, :, ::-1]])
                both = self._infer(pair)
                out.append((both[: len(chunk)] + both[len(chunk) :]) / 2)
            else:
                out.append(self._infer(chunk))
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict_proba(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 grayscale faces ``(N, 48, 48)``."""
        return softmax(self.logits(to_model_input(faces), batch_size))

    def warm_up(self, max_faces: int) -> None:
        """Run every batch size a call of up to ``max_faces`` faces uses once (with the hflip TTA
        that is twice as many rows; OpenVINO: every padded size, on each of its threads)."""
        rows = max_faces * (2 if self.tta is TestTimeAugmentation.HFLIP else 1)
        if self.runtime is Runtime.OPENVINO:
            self._engine.warm_up(rows)
        else:
            self._infer(np.zeros((rows, 48, 48, 1), np.float32))

    def predict(self, faces: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(faces).argmax(axis=1)]


class _OpenVINO:
    """The ONNX file compiled by OpenVINO for the CPU, fp32 precision (its bf16 default on AMX
    CPUs would move logits away from the Keras model).

    One single-threaded stream per thread, not one stream using all of them: a call is split
    into a part per stream that run side by side. A multi-threaded stream meets at a barrier
    after every layer, so on cores it shares with a server's event loop one preempted thread
    stalls the others; single-threaded parts never wait for each other.

    Memory stays flat under a server's load because of two choices: parts are padded to a few
    sizes (:func:`_bucket`), and every part runs on one of the ``streams`` threads owned here,
    each with its own infer request. OpenVINO keeps per-calling-thread state, so a server
    whose thread pool rotates its threads would otherwise grow without end.
    """

    MIN_PART_ROWS = 4  # smaller parts cost more per row than they gain from running in parallel

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        self.streams = max(1, threads)
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": self.streams,
                "NUM_STREAMS": self.streams,
            },
        )
        # The first NumPy view of an OpenVINO tensor initialises pybind11's NumPy bridge inside
        # openvino's extension module; two threads doing it at once deadlock on a static-init
        # guard and the GIL (seen: about 1 server start in 30 hung in the probe). One call on this
        # thread does it before any caller thread exists.
        self.compiled.create_infer_request().infer({0: np.zeros((1, 48, 48, 1), np.float32)})
        self._local = threading.local()
        self._callers = ThreadPoolExecutor(self.streams, thread_name_prefix="ferflow-openvino")
        self._on_every_caller(self._request)  # all caller threads now, each with its request
        self.warming: Future[list[np.ndarray]] | None = None  # the background part of warm_up

    def _on_every_caller(self, work: Callable[[], object]) -> list:
        """Run ``work`` once on each of the ``streams`` caller threads; its results.

        Every task first waits for all the others and for this thread, so no thread can take
        two. On a new pool that also starts every thread: ThreadPoolExecutor starts one per
        task only while none is idle, and counts a thread idle once per finished task, so a
        pool whose first calls were one-part calls could stay at one thread.
        """
        everyone = threading.Barrier(self.streams + 1)

        def task() -> object:
            everyone.wait(timeout=60)
            return work()

        tasks = [self._callers.submit(task) for _ in range(self.streams)]
        everyone.wait(timeout=60)
        return [t.result() for t in tasks]

    def parts(self, rows: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of the parts a call of ``rows`` rows is split into, one per stream."""
        k = max(1, min(self.streams, rows // self.MIN_PART_ROWS))
        bounds = [rows * i // k for i in range(k + 1)]
        return list(itertools.pairwise(bounds))

    def part_sizes(self, max_rows: int) -> list[int]:
        """Every padded part size that calls of 1 to ``max_rows`` rows run at."""
        return sorted({_bucket(b - a) for n in range(1, max(1, max_rows) + 1) for a, b in self.parts(n)})

    def run(self, x: np.ndarray) -> np.ndarray:
        futures = [self._callers.submit(self._infer, x[a:b]) for a, b in self.parts(len(x))]
        return np.concatenate([f.result() for f in futures])

    def warm_up(self, max_rows: int) -> None:
        """Every padded part size of calls up to ``max_rows``: the powers of two now, on every
        caller thread (each keeps its own buffers); the sizes between them in the background,
        where their kernels compile while the caller already serves (the start-up stays as
        short as with power-of-two padding alone)."""
        sizes = self.part_sizes(max_rows)
        now = [s for s in sizes if s & (s - 1) == 0]
        later = [s for s in sizes if s not in now]
        self._on_every_caller(lambda: [self._infer(np.zeros((s, 48, 48, 1), np.float32)) for s in now])
        self.warming = self._callers.submit(
            lambda: [self._infer(np.zeros((size, 48, 48, 1), np.float32)) for size in later]
        )

    def _request(self):
        """This thread's infer request (created on first use)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _infer(self, x: np.ndarray) -> np.ndarray:
        request = self._request()
        n, size = len(x), _bucket(len(x))
        if n == size:
            batch = np.ascontiguousarray(x, dtype=np.float32)
        else:
            batch = np.zeros((size, *x.shape[1:]), dtype=np.float32)
            batch[:n] = x
        request.infer({0: batch})
        return request.get_output_tensor(0).data[:n].copy()


def _bucket(n: int) -> int:
    """The batch size a call of ``n`` rows runs at: the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, …
    (powers of two and the halfway points 3·2^k), so padding wastes at most a third of a call.
    OpenVINO keeps shape-specific kernels and buffers for every batch size it has seen (about
    10 MB each for the reference model: 64 sizes took 650 MB), so calls are padded to a few sizes
    instead of running at their own."""
    if n <= 2:
        return max(1, n)
    below = 1 << (n - 1).bit_length() - 1  # the largest power of two under n
    return below * 3 // 2 if n <= below * 3 // 2 else below * 2
