"""Typed configuration shared by every stage: class sets, label schemes, paths, gate limits.

Adapters (CLI, KFP components, BentoML) read names and defaults from here; nothing else
hard-codes class lists or file names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

IMAGE_SIZE = 48
"""Side of the canonical grayscale face crop, in pixels (FER2013/FERPlus native size)."""

FERPLUS_ANNOTATORS = 10
"""Every FERPlus image was labelled by ten crowd workers."""

FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
"""Column order of the ten vote counts in FERPlus ``label.csv`` (NF = not a face)."""

FERPLUS_EMOTIONS: tuple[str, ...] = FERPLUS_VOTE_COLUMNS[:8]

FER2013_CODES: tuple[str, ...] = (
    "anger",  # 0 Angry
    "disgust",  # 1 Disgust
    "fear",  # 2 Fear
    "happiness",  # 3 Happy
    "sadness",  # 4 Sad
    "surprise",  # 5 Surprise
    "neutral",  # 6 Neutral
)
"""FER2013 Kaggle CSV ``emotion`` codes 0..6, as FERPlus class names."""

CLASS_SYNONYMS: dict[str, str] = {
    # folder-per-class trees name classes in many ways; all map to FERPlus names
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "happiness",
    "happiness": "happiness",
    "joy": "happiness",
    "surprise": "surprise",
    "surprised": "surprise",
    "sad": "sadness",
    "sadness": "sadness",
    "angry": "anger",
    "anger": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "contempt": "contempt",
}


class LabelScheme(StrEnum):
    """Barsoum et al. 2016 (FERPlus) ways of turning ten votes into a training target."""

    MAJORITY = "majority"
    PROBABILITY = "probability"
    CROSSENTROPY = "crossentropy"
    MULTI_TARGET = "multi_target"


class SourceFormat(StrEnum):
    FERPLUS = "ferplus"
    FER2013_CSV = "fer2013-csv"
    FOLDERS = "folders"


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of output classes plus how FERPlus emotions map onto it.

    ``mapping`` sends a FERPlus emotion name to a class of this set; emotions it omits are
    outside the set and their images are dropped at ingest.
    """

    name: str
    classes: tuple[str, ...]
    mapping: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.mapping:
            object.__setattr__(self, "mapping", {c: c for c in self.classes})
        unknown = set(self.mapping.values()) - set(self.classes)
        if unknown:
            raise ValueError(f"class set {self.name!r}: mapping targets {sorted(unknown)} not in classes")

    def index_of(self, ferplus_emotion: str) -> int | None:
        target = self.mapping.get(ferplus_emotion)
        return None if target is None else self.classes.index(target)


CLASS_SETS: dict[str, ClassSet] = {
    "ferplus8": ClassSet("ferplus8", FERPLUS_EMOTIONS),
    "fer2013": ClassSet("fer2013", tuple(e for e in FERPLUS_EMOTIONS if e != "contempt")),
    # clinical monitoring uses a reduced, more reliable set
    "clinical4": ClassSet("clinical4", ("neutral", "happiness", "sadness", "anger")),
    # valence: coarse positive / neutral / negative grouping
    "valence3": ClassSet(
        "valence3",
        ("negative", "neutral", "positive"),
        {
            "neutral": "neutral",
            "happiness": "positive",
            "surprise": "positive",
            "sadness": "negative",
            "anger": "negative",
            "disgust": "negative",
            "fear": "negative",
            "contempt": "negative",
        },
    ),
}


def get_class_set(name: str) -> ClassSet:
    try:
        return CLASS_SETS[name]
    except KeyError:
        raise ValueError(f"unknown class set {name!r}; choose one of {sorted(CLASS_SETS)}") from None


class LeakagePolicy(StrEnum):
    """What the gate does with an image whose content appears in more than one split."""

    FAIL = "fail"
    DROP = "drop"  # keep it in the most held-out split (test > valid > train), drop elsewhere


@dataclass(frozen=True)
class GateConfig:
    """Limits of the data-quality gate. Defaults are strict; relax them explicitly."""

    min_class_count: int = 20
    min_pixel_std: float = 3.0  # below this an image is blank or constant
    leakage: LeakagePolicy = LeakagePolicy.FAIL
    drop_bad_votes: bool = False  # drop rows whose votes do not sum to the annotator count
    max_dropped_fraction: float = 0.05  # a drop policy that removes more than this fails
    # photos where face detection finds no face: dropped and listed in the report (never
    # centre-cropped instead), or a failed gate
    drop_no_face: bool = False
    # every class of the class set needs min_class_count training images; False: only the
    # classes the source has at all (a photo pool without fear or contempt)
    require_every_class: bool = True


@dataclass(frozen=True)
class IngestConfig:
    source_format: SourceFormat = SourceFormat.FERPLUS
    label_scheme: LabelScheme = LabelScheme.MAJORITY
    class_set: str = "ferplus8"
    gate: GateConfig = field(default_factory=GateConfig)
    # folder trees: find the face in each photo as the server does; False for trees of face
    # crops that are already framed (any size: they are centre-square cropped and resized)
    detect_faces: bool = True


@dataclass(frozen=True)
class DataSource:
    """One source dataset of a multi-source ingest: its rows keep ``name`` in ``dataset``.

    Folder trees of photos go through the serving path's face detection and FER framing at
    ingest (images already 48x48 are taken as face crops); see ``ferflow.data``.
    """

    name: str  # lowercase letters, digits, - or _: a column value and a report folder name
    path: str  # relative to the project root, or absolute
    source_format: SourceFormat = SourceFormat.FOLDERS
    gate: GateConfig = field(default_factory=GateConfig)
    weight: float = 1.0  # default training weight of its rows (TrainConfig.source_weights wins)
    detect_faces: bool = True  # folder trees: photos (True) or already-framed face crops (False)


# Gate for labelled photo trees: drop (and list) photos without a detectable face and cross-split
# copies; a pool may lack classes, but each class it has needs 20 training images.
PHOTO_GATE = GateConfig(leakage=LeakagePolicy.DROP, drop_no_face=True, require_every_class=False)

# The embedded defaults of the main job: the DVC FERPlus pull, FERPlus 8 classes, majority
# labels. FERPlus ships 269 Train images byte-identical to Valid images and one Train row with
# 9 votes; the main job drops them (docs/data.md, "Data quality of FERPlus") rather than failing.
FERPLUS_DEFAULT_INGEST = IngestConfig(
    gate=GateConfig(leakage=LeakagePolicy.DROP, drop_bad_votes=True),
)

# The sources of ``data/`` (``data.dvc``): FERPlus and the labelled photos, one canonical dataset.
DEFAULT_SOURCES: tuple[DataSource, ...] = (
    DataSource("ferplus", "data/ferplus", SourceFormat.FERPLUS, FERPLUS_DEFAULT_INGEST.gate),
    DataSource("photos", "data/photos", SourceFormat.FOLDERS, PHOTO_GATE),
)


@dataclass(frozen=True)
class Paths:
    """Where things live, relative to the project root unless overridden by environment."""

    root: Path = field(default_factory=lambda: Path(os.environ.get("FERFLOW_HOME", Path.cwd())))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def ferplus_raw(self) -> Path:
        return self.data / "ferplus"

    @property
    def canonical(self) -> Path:
        # outside data/: data.dvc tracks all of data/, and a pull refuses unknown files there
        return self.artifacts / "canonical"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{self.root / 'mlflow.db'}")


SPLIT_ORDER: tuple[str, ...] = ("train", "valid", "test")
"""Canonical split names, least to most held-out."""

CANONICAL_FORMAT_VERSION = 1


class DetectorName(StrEnum):
    """Face detectors in ``ferflow.faces``; all run offline from files shipped in wheels."""

    BLAZEFACE = "blazeface"  # MediaPipe BlazeFace short-range, converted to ONNX (ferflow/assets)
    HAAR = "haar"  # OpenCV haarcascade_frontalface_default.xml
    HAAR_ALT2 = "haar-alt2"  # OpenCV haarcascade_frontalface_alt2.xml


@dataclass(frozen=True)
class FaceConfig:
    """Face detection and FER-style cropping. BlazeFace is the default (see docs/benchmarks.md)."""

    detector: DetectorName = DetectorName.BLAZEFACE
    min_score: float = 0.5  # BlazeFace sigmoid score threshold (MediaPipe's default)
    nms_iou: float = 0.3  # IoU above which detections are merged (BlazeFace) or dropped (Haar)
    max_faces: int = 64  # keep at most this many faces, highest score first
    min_face_fraction: float = 0.0  # ignore faces smaller than this fraction of the long side
    # BlazeFace short-range sees the image at 128x128 and finds faces >~15% of that side; for
    # smaller faces it also runs on an n x n grid of half-overlapping square tiles (0 = off),
    # when the tiles are at least blazeface_tile_min_px pixels (so 350x350 portraits skip them).
    blazeface_tiles: int = 3
    blazeface_tile_min_px: int = 192
    blazeface_pad: float = 0.0  # border (fraction of the long side) added around the image
    haar_pad: float = 0.25  # Haar needs a border to find faces that fill the image
    haar_scale_factor: float = 1.1
    haar_min_neighbors: int = 5
    haar_min_side: int = 160  # smaller images are upscaled to this short side before Haar
    crop_margin: float = 1.0  # multiplies the calibrated FER2013 framing of crops
    align: bool = False  # rotate crops so the eyes are level (FER2013 itself is not aligned)
    num_threads: int = 1  # ONNX Runtime intra-op threads per detector


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow registry and the promotion gate (see ferflow.registry)."""

    model_name: str = "ferflow"
    margin: float = 0.0  # challenger accuracy must be >= champion accuracy + margin
    f1_margin: float = 0.0  # allowed macro-F1 regression (0: none)
    probe_image: str | None = None  # photo for infra-validation; None: composed from the eval set
    # allowed accuracy regression on each source dataset of the evaluation split (photos, ...),
    # over its own classes; about 1.5 standard errors on the 684 photos of data/'s valid split
    dataset_tolerance: float = 0.02


# --- training (ferflow.train, ferflow.models, ferflow.augment) ---


class OptimizerName(StrEnum):
    ADAMW = "adamw"
    SGD = "sgd"  # Nesterov momentum 0.9


class ScheduleName(StrEnum):
    COSINE = "cosine"  # linear warm-up, then cosine decay to zero
    ONECYCLE = "onecycle"  # cosine ramp up for 30 % of the steps, cosine anneal down


class Precision(StrEnum):
    AUTO = "auto"  # GPU: mixed_float16; CPU with AMX-bf16 or AVX512-BF16: mixed_bfloat16; else float32
    FLOAT32 = "float32"
    MIXED_BFLOAT16 = "mixed_bfloat16"
    MIXED_FLOAT16 = "mixed_float16"


class DistributeMode(StrEnum):
    """How ``ferflow train`` spreads one fit over devices and processes (ferflow.distribute)."""

    AUTO = "auto"  # TF_CONFIG set: multi-worker; several GPUs: mirrored; else none
    NONE = "none"
    MIRRORED = "mirrored"  # the local devices of one process (GPUs, or logical CPU devices)
    MULTI_WORKER = "multi-worker"  # one process per worker, TF_CONFIG names the cluster


class HeadName(StrEnum):
    """The classifier on top of the trained backbone's features."""

    SOFTMAX = "softmax"  # the network's own dense softmax layer
    XGBOOST = "xgboost"  # gradient-boosted trees on the penultimate features (ferflow.xgb_head)


@dataclass(frozen=True)
class XGBoostHeadConfig:
    """The ``head: xgboost`` fit on the backbone's penultimate features (ferflow.xgb_head)."""

    n_estimators: int = 400
    max_depth: int = 6
    learning_rate: float = 0.1
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    early_stopping_rounds: int = 30  # on the tuning split
    tree_method: str = "hist"


class Runtime(StrEnum):
    """The engine that runs an exported ONNX model (``FerClassifier``; ``FERFLOW_RUNTIME``)."""

    AUTO = "auto"  # OpenVINO when it matches the graph as written on a probe batch, else ONNX Runtime
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"  # about 2.5x ONNX Runtime on the reference model (docs/benchmarks.md, Inference)


RUNTIME_ENV = "FERFLOW_RUNTIME"


class TestTimeAugmentation(StrEnum):
    """Inference-time augmentation, stored in the exported model's metadata (``tta``)."""

    NONE = "none"
    HFLIP = "hflip"  # mean of the logits of the face and its mirror image: 2x the compute


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation (ferflow.augment); fractions are of the 48-pixel side."""

    max_shift: float = 0.1
    scale_range: tuple[float, float] = (0.9, 1.1)  # > 1 zooms in (tight framing), < 1 out
    aspect_jitter: float = 0.0  # x/y scales s·r and s/r, log r ~ U(-a, a): faces boxed wide or tall
    rotation_deg: float = 10.0
    flip: bool = True
    brightness: float = 0.2  # additive, on the [0, 1] scale
    contrast: float = 0.3  # multiplicative jitter 1 ± contrast around the image mean
    gamma: float = 0.0  # pixel ** exp(U(-gamma, gamma)): under- and over-exposed cameras
    # Camera degradations, each on a random share of the batch (0 disables): Gaussian blur with
    # one σ ~ U(0.3, blur_sigma) per batch, down- then up-sampling through a side drawn in
    # [downscale_side, 40] per batch (small faces in video), and additive Gaussian noise with
    # σ ~ U(0, noise_sigma) per image (on the [0, 1] scale).
    blur_prob: float = 0.0
    blur_sigma: float = 1.5
    downscale_prob: float = 0.0
    downscale_side: int = 12
    noise_prob: float = 0.0
    noise_sigma: float = 0.08
    erase_prob: float = 0.25  # random erasing (occlusion robustness)
    erase_area: tuple[float, float] = (0.02, 0.15)
    mixup_alpha: float = 0.0  # 0 disables mixup


MODEL_NAMES: tuple[str, ...] = ("ran", "ran_fm", "resnet", "cnn")
"""The architectures of :mod:`ferflow.models` (named here so a recipe is checked without Keras)."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run: an untuned base recipe.

    Named recipes in ``configs/`` (``reference``: the committed model's) override these
    defaults; :mod:`ferflow.recipes` reads them.
    """

    model: str = "ran_fm"
    width: int = 40
    depths: tuple[int, ...] = (2, 2, 2, 2)
    head_stages: int = 1  # ran_fm: backbone stages run per region on the cropped feature map
    dropout: float = 0.2
    rb_margin: float = 0.02  # region-biased loss margin (RAN models)
    rb_weight: float = 1.0
    label_scheme: LabelScheme = LabelScheme.PROBABILITY
    epochs: int = 45
    batch_size: int = 64
    optimizer: OptimizerName = OptimizerName.ADAMW
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    schedule: ScheduleName = ScheduleName.COSINE
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    class_weight_power: float = 0.25  # sample weight (n_mean / n_class) ** power; 0 = unweighted
    # loss weight of each source dataset's rows (``{photos: 2.0}``), times the class weight;
    # a source not named keeps its ingest weight (1); 0 leaves the source out of training
    source_weights: dict[str, float] = field(default_factory=dict)
    tune_fraction: float = 0.1  # stratified tuning split carved from train (early stopping)
    early_stopping_patience: int = 10
    seed: int = 42
    # start from these weights (a ``.weights.h5`` or ``.keras`` file of the same architecture)
    # instead of a random initialisation; nothing is ever downloaded
    init_weights: str | None = None
    # offline distillation: an exported ferflow ONNX model scores the un-augmented training faces
    # once (with its own TTA), and its probabilities take ``teacher_weight`` of each target
    teacher: str | None = None
    teacher_weight: float = 0.5
    precision: Precision = Precision.AUTO
    distribute: DistributeMode = DistributeMode.AUTO
    head: HeadName = HeadName.SOFTMAX
    xgboost: XGBoostHeadConfig = field(default_factory=XGBoostHeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    quantize_int8: bool = True  # keep the int8 ONNX only if it costs <= 0.5 accuracy points
    tta: TestTimeAugmentation = TestTimeAugmentation.HFLIP  # written into the export's metadata ...
    tta_min_gain: float = 0.003  # ... if it gains >= 0.3 points on the tuning split (else "none")
    robustness: bool = True  # run the robustness suite on the test split after export
    experiment: str = "ferflow-train"


EXPORT_ONLY_FIELDS = frozenset({"quantize_int8", "tta", "tta_min_gain", "robustness", "experiment"})
"""TrainConfig fields that do not change the fit: ``--resume`` may change them (re-export)."""


# --- Kubeflow pipeline (ferflow.pipeline, components/, pipelines/) ---

PIPELINE_IMAGE = os.environ.get("FERFLOW_IMAGE", "ferflow/ferflow:0.1.0")
"""``base_image`` of every KFP component: the image built from the repository's Dockerfile.
Set ``FERFLOW_IMAGE`` (e.g. ``ghcr.io/acme/ferflow:0.1.0@sha256:...``) before compiling to pin
another registry or digest."""

PIPELINE_NAME = "ferflow-training"
DVC_SOURCE = "dvc"
"""Pipeline ``source`` value meaning "the project's DVC-tracked FERPlus" (pulled in the step)."""


@dataclass(frozen=True)
class PipelineProfile:
    """One named set of pipeline arguments. ``ferflow pipeline run/submit --profile NAME``.

    The fields named in :meth:`arguments` become the pipeline's runtime parameters; every one
    of them can still be overridden per run.
    """

    name: str
    source: str = DVC_SOURCE  # "dvc" or a dataset folder/CSV in ``source_format``
    source_format: SourceFormat = SourceFormat.FERPLUS
    # with source "dvc": the sources of data/ ingested together (DEFAULT_SOURCES names)
    sources: str = "ferplus,photos"
    data_version: str = ""  # expected DVC md5 of the data; "" = whatever data.dvc points at
    class_set: str = FERPLUS_DEFAULT_INGEST.class_set
    leakage: LeakagePolicy = FERPLUS_DEFAULT_INGEST.gate.leakage
    drop_bad_votes: bool = FERPLUS_DEFAULT_INGEST.gate.drop_bad_votes
    min_class_count: int = FERPLUS_DEFAULT_INGEST.gate.min_class_count
    model: str = TrainConfig.model
    epochs: int = TrainConfig.epochs
    trials: int = 0  # Optuna trials before the final training (0: TrainConfig defaults)
    trial_epochs: int = 5  # epochs per trial (the pruner's steps)
    trial_subset: int = 4000  # training images per trial (0: all of Train minus the tuning split)
    tune_workers: int = 1  # dsl.ParallelFor workers sharing the study (an RDB storage on a cluster)
    limit_train: int = 0  # cap on training images (0: all of Train minus the tuning split)
    steps_per_epoch: int = 0  # 0: one pass over the training images per epoch
    min_accuracy: float = 0.0  # absolute floor on test accuracy before promotion is considered
    min_macro_f1: float = 0.0
    track: bool = True  # log training to MLflow (Paths().mlflow_uri)
    registered_model: str = "ferflow"  # MLflow registered model the gate promotes in
    expected_minutes_cpu2: float = 0.0  # documented wall time on 2 CPU cores
    expected_minutes_gpu: float = 0.0  # documented wall time on one GPU

    def arguments(self) -> dict[str, str | int | float | bool]:
        """The pipeline parameters this profile sets (names match ``pipelines.training``)."""
        return {
            "profile": self.name,
            "source": self.source,
            "source_format": SourceFormat(self.source_format).value,
            "sources": self.sources,
            "data_version": self.data_version,
            "class_set": self.class_set,
            "leakage": LeakagePolicy(self.leakage).value,
            "drop_bad_votes": self.drop_bad_votes,
            "min_class_count": self.min_class_count,
            "model_name": self.model,
            "epochs": self.epochs,
            "limit_train": self.limit_train,
            "steps_per_epoch": self.steps_per_epoch,
            "min_accuracy": self.min_accuracy,
            "min_macro_f1": self.min_macro_f1,
            "track": self.track,
            "trials": self.trials,
            "trial_epochs": self.trial_epochs,
            "trial_subset": self.trial_subset,
            "tune_workers": self.tune_workers,
            "registered_model": self.registered_model,
        }


PROFILES: dict[str, PipelineProfile] = {
    # CI: the full pipeline on the real data, a few hundred training images, one short epoch.
    # It proves the plumbing, not the model: no accuracy floor.
    "smoke": PipelineProfile(
        name="smoke",
        epochs=1,
        trials=1,
        trial_epochs=1,
        trial_subset=384,
        limit_train=384,
        steps_per_epoch=6,
        expected_minutes_cpu2=5.0,
        expected_minutes_gpu=3.0,
    ),
    # The README's main command: full data, a tuning study on a 4,000-image subset (4 trials of
    # 5 epochs, the first the untuned recipe), the full reference-recipe training (with the tuned
    # values only if they beat the recipe by TuneConfig.min_gain), evaluation, gate, promotion.
    # Measured end to end on 2 Xeon cores (make run, docs/benchmarks.md): 109 min, of which
    # tuning 9 min and training 98 min; the GPU figure is an estimate.
    "default": PipelineProfile(
        name="default",
        trials=4,
        trial_epochs=5,
        trial_subset=4000,
        tune_workers=2,
        min_accuracy=0.80,
        min_macro_f1=0.55,
        expected_minutes_cpu2=109.0,
        expected_minutes_gpu=20.0,
    ),
}


def get_profile(name: str) -> PipelineProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline profile {name!r}; choose one of {sorted(PROFILES)}") from None


@dataclass(frozen=True)
class TrainJobConfig:
    """The training step as a Kubeflow ``TFJob`` (Training Operator v1, kubeflow.org/v1): with
    ``workers`` > 1 the pipeline's train step submits one, waits for it and collects its model
    (ferflow.trainjob); 0 or 1 trains inside the step as before. Compile time only."""

    workers: int = 0  # TFJob Worker replicas; > 1: the distributed branch
    gpus_per_worker: int = 0  # accelerators (ClusterConfig.accelerator) per worker pod
    cpu: str = "8"  # per worker pod
    memory: str = "16G"  # per worker pod, request and limit
    namespace: str = ""  # "": the namespace the pipeline's pod runs in
    service_account: str = ""  # the workers' ServiceAccount ("": the namespace's default)
    timeout_s: int = 6 * 3600  # the pipeline gives up (and deletes the job) after this long
    poll_s: float = 30.0  # seconds between two reads of the job's status
    backoff_limit: int = 3  # pod restarts the operator allows (retryable exit codes only)
    ttl_after_finished_s: int = 24 * 3600  # the operator deletes the finished job after this


@dataclass(frozen=True)
class ClusterConfig:
    """Compile-time settings for a Kubernetes cluster (no effect under kfp.local).

    Core KFP sets requests/limits, accelerators and retries; ``node_selector``,
    ``tolerations`` and ``secret_env`` need the ``kfp-kubernetes`` package.
    """

    train_cpu: str = "8"
    train_memory: str = "16G"
    gpus: int = 0  # > 0: the train step asks for this many accelerators
    accelerator: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)  # e.g. {"nvidia.com/gpu.product": "..."}
    tolerations: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect), operator Equal
    retries: int = 2  # transient failures (pre-empted node, registry timeout) of every step
    retry_backoff: str = "60s"
    # (ENV_VAR, secret name, secret key) set on every step from Kubernetes Secrets, e.g.
    # ("MLFLOW_TRACKING_URI", "ferflow-db", "mlflow-uri"); credentials never enter the IR YAML
    secret_env: tuple[tuple[str, str, str], ...] = ()
    train_job: TrainJobConfig = field(default_factory=TrainJobConfig)  # workers > 1: a TFJob


# --- hyper-parameter tuning (ferflow.tune; Optuna) ---

OPTUNA_STORAGE_ENV = "FERFLOW_OPTUNA_STORAGE"
"""Environment variable holding the Optuna storage URL (any SQLAlchemy URL); on a cluster map it
from a Secret (``ClusterConfig.secret_env``), like ``MLFLOW_TRACKING_URI``."""


def default_optuna_storage(root: Path | None = None) -> str:
    """``$FERFLOW_OPTUNA_STORAGE``, else the SQLite file ``optuna.db`` at the project root."""
    return os.environ.get(OPTUNA_STORAGE_ENV) or f"sqlite:///{(root or Paths().root) / 'optuna.db'}"


class PrunerName(StrEnum):
    MEDIAN = "median"  # prune when the epoch's tuning accuracy is below the median of earlier trials
    HYPERBAND = "hyperband"  # successive halving over epochs, several brackets
    # asynchronous successive halving (one Hyperband bracket): a trial goes on past epochs
    # r, fr, f²r, ... (r = warmup_epochs + 1, f = reduction_factor) only while it is in the top
    # 1/f of the trials scored at that epoch
    ASHA = "asha"
    NONE = "none"


class PruneSignal(StrEnum):
    """What a trial reports to the pruner after each epoch (the objective stays its best
    tuning-split accuracy either way)."""

    ACCURACY = "accuracy"  # tuning-split accuracy
    # minus the tuning-split loss: it falls smoothly while accuracy still sits near the
    # majority-class rate in the first epochs, where accuracy ranks trials almost at random
    LOSS = "loss"


@dataclass(frozen=True)
class TuneSpace:
    """The search space of ``ferflow tune``: (low, high) ranges and categorical choices.

    A range with ``low == high`` or a single choice fixes that hyper-parameter (it is still
    recorded on every trial). Learning rate and weight decay are sampled on a log scale.
    """

    learning_rate: tuple[float, float] = (3e-4, 1e-2)  # log scale
    weight_decay: tuple[float, float] = (1e-3, 0.2)  # log scale
    width: tuple[int, ...] = (16, 24, 32, 40, 48)  # backbone base width
    dropout: tuple[float, float] = (0.0, 0.5)
    erase_prob: tuple[float, float] = (0.0, 0.7)  # random-erasing probability
    rotation_deg: tuple[float, float] = (0.0, 20.0)
    label_scheme: tuple[LabelScheme, ...] = (
        LabelScheme.MAJORITY,
        LabelScheme.PROBABILITY,
        LabelScheme.CROSSENTROPY,
    )
    rb_margin: tuple[float, float] = (0.0, 0.1)  # region-biased loss margin (RAN models)
    batch_size: tuple[int, ...] = (32, 64, 128)


@dataclass(frozen=True)
class TuneConfig:
    """One Optuna study: what to search, how long, where it is stored, how trials are cut short.

    Trials train ``base`` with the sampled values for ``epochs`` epochs on Train minus the
    tuning split (``base.tune_fraction``, seeded by ``base.seed``, the same for every trial)
    and are scored by their best tuning-split accuracy; the dataset's ``valid`` split (the
    test set) is never loaded.
    """

    study: str = "ferflow"
    storage: str = ""  # SQLAlchemy URL; "" = default_optuna_storage()
    trials: int = 20  # new trials this invocation adds to the study (all workers together)
    timeout: float = 0.0  # seconds per worker; 0 = no limit
    workers: int = 1  # processes sharing the study (each pinned to its own core if they fit)
    subset: int = 0  # cap on training images per trial (0 = all of Train minus the tuning split)
    epochs: int = 10  # epochs per trial (the pruner's steps)
    steps_per_epoch: int = 0  # 0 = one pass over the (subset) training images
    pruner: PrunerName = PrunerName.MEDIAN
    prune_on: PruneSignal = PruneSignal.ACCURACY
    startup_trials: int = 5  # random trials before TPE models the space; the pruner waits as long
    # epochs no pruner judges: the first decision follows epoch warmup_epochs + 1 (median: the
    # first step it compares; ASHA/Hyperband: the first rung, then x reduction_factor per rung)
    warmup_epochs: int = 1
    # ASHA/Hyperband: 1 in reduction_factor trials goes on past each rung
    reduction_factor: int = 3
    # a categorical parameter of the space ("label_scheme", "width", "batch_size") or "": the
    # pruner compares a trial only with the trials that drew the same choice. The three label
    # schemes' curves differ in shape early on; compared across schemes, the first trials of a
    # scheme get pruned and TPE then stops drawing it (docs/training.md, "Tuning")
    prune_within: str = ""
    # asha/median: judge each trial by its tuning accuracy plus the gain a trial with its
    # learning rate went on to make from that epoch to its end, a line in log(learning rate)
    # fitted on the study's complete trials. Early accuracy favours low rates that stall and
    # prunes the high rates that end best (short-horizon bias); the pruner waits for
    # startup_trials complete trials to fit the line (docs/training.md, "Tuning")
    horizon_correction: bool = False
    seed: int = 42
    space: TuneSpace = field(default_factory=TuneSpace)
    base: TrainConfig = field(default_factory=lambda: TrainConfig(early_stopping_patience=0))
    experiment: str = "ferflow-tune"
    track: bool = True  # study = MLflow parent run, trials = nested runs
    # a new study's first trial is ``base`` itself, so every study measures the untuned recipe
    # under the same budget and the tuned result has to beat it (gain reported in the summary)
    baseline: bool = True
    # the pipeline trains with the best trial's values only when they beat that baseline by this
    # much (tuning-split accuracy, 0-1); a smaller gain is within the noise of short trials
    min_gain: float = 0.005

    @property
    def storage_url(self) -> str:
        return self.storage or default_optuna_storage()
