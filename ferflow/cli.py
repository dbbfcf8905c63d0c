"""The ``ferflow`` command line. Thin: parse options, build a typed config, call the stage.

Heavy imports (TensorFlow, MLflow, Great Expectations) happen inside commands so that
``ferflow --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferflow.config import (
    GateConfig,
    IngestConfig,
    LabelScheme,
    LeakagePolicy,
    Paths,
    SourceFormat,
    TestTimeAugmentation,
)

app = typer.Typer(
    help="ferflow: facial emotion recognition, from versioned data to a served model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Pull, ingest, validate and describe datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

PATHS = Paths()
FormatOpt = Annotated[SourceFormat, typer.Option("--format", "-f", help="Layout of SRC.")]
SrcArg = Annotated[
    Path,
    typer.Argument(help="Dataset in the given layout (for ferplus: a folder holding FER2013*/)."),
]
SchemeOpt = Annotated[LabelScheme, typer.Option("--scheme", help="FERPlus label scheme.")]
ClassSetOpt = Annotated[str, typer.Option("--class-set", help="ferplus8, fer2013, clinical4, valence3.")]
LeakageOpt = Annotated[
    LeakagePolicy,
    typer.Option("--leakage", help="fail on images shared across splits, or drop the less held-out copy."),
]
DropVotesOpt = Annotated[
    bool,
    typer.Option("--drop-bad-votes", help="drop vote rows not summing to the annotator count."),
]
MinCountOpt = Annotated[int, typer.Option("--min-class-count", help="fewest training images per class.")]
ReportOpt = Annotated[Path, typer.Option("--report", help="folder for GX Data Docs and summary.json.")]

_GATE = GateConfig()
_INGEST = IngestConfig()


def _ingest_config(
    source_format: SourceFormat,
    scheme: LabelScheme,
    class_set: str,
    leakage: LeakagePolicy,
    drop_bad_votes: bool,
    min_class_count: int,
) -> IngestConfig:
    gate = GateConfig(min_class_count=min_class_count, leakage=leakage, drop_bad_votes=drop_bad_votes)
    return IngestConfig(source_format, scheme, class_set, gate)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@data_app.command("pull")
def data_pull(
    root: Annotated[Path, typer.Option(help="project root (holds .dvc/ and data.dvc).")] = PATHS.root,
) -> None:
    """Materialise data/ from the DVC remote (default remote `storage`)."""
    from ferflow.versioning import DataPullError, pull

    try:
        stats = pull(root)
    except DataPullError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"dvc pull: {stats.get('fetched', 0)} fetched, {len(stats.get('added', []))} added")


def _run_ingest(src: Path, out: Path | None, report: Path, config: IngestConfig) -> None:
    from ferflow.data import IngestError, ingest, ingest_to_memory
    from ferflow.validate import GateFailed

    try:
        if out is None:
            result = ingest_to_memory(src, config, report_dir=report)
        else:
            result = ingest(src, out, config, report_dir=report)
    except IngestError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    except GateFailed as exc:
        raise _fail(exc.report.human() + ("" if out is None else f"\nnothing written to {out}")) from exc
    typer.echo(result.report.human())
    for split, info in result.meta["splits"].items():
        typer.echo(f"  {split}: {info['n']} images  {info['class_counts']}")
    if out is not None:
        typer.secho(f"canonical dataset written to {out}", fg=typer.colors.GREEN)


@data_app.command("ingest")
def data_ingest(
    src: SrcArg = PATHS.ferplus_raw,
    source_format: FormatOpt = _INGEST.source_format,
    out: Annotated[Path, typer.Option("--out", "-o", help="canonical dataset folder.")] = PATHS.canonical,
    scheme: SchemeOpt = _INGEST.label_scheme,
    class_set: ClassSetOpt = _INGEST.class_set,
    leakage: LeakageOpt = _GATE.leakage,
    drop_bad_votes: DropVotesOpt = _GATE.drop_bad_votes,
    min_class_count: MinCountOpt = _GATE.min_class_count,
    report: ReportOpt = PATHS.artifacts / "validation",
) -> None:
    """Ingest SRC and run the validation gate; write the canonical dataset only if it passes."""
    config = _ingest_config(source_format, scheme, class_set, leakage, drop_bad_votes, min_class_count)
    _run_ingest(src, out, report, config)


@data_app.command("validate")
def data_validate(
    src: SrcArg = PATHS.ferplus_raw,
    source_format: FormatOpt = _INGEST.source_format,
    scheme: SchemeOpt = _INGEST.label_scheme,
    class_set: ClassSetOpt = _INGEST.class_set,
    leakage: LeakageOpt = _GATE.leakage,
    drop_bad_votes: DropVotesOpt = _GATE.drop_bad_votes,
    min_class_count: MinCountOpt = _GATE.min_class_count,
    report: ReportOpt = PATHS.artifacts / "validation",
) -> None:
    """Run the validation gate alone; writes nothing but its report. Exit 1 when it fails."""
    config = _ingest_config(source_format, scheme, class_set, leakage, drop_bad_votes, min_class_count)
    _run_ingest(src, None, report, config)


@data_app.command("stats")
def data_stats(
    dataset: Annotated[Path, typer.Argument(help="canonical dataset folder.")] = PATHS.canonical,
    plot: Annotated[
        Path | None, typer.Option(help="class-balance PNG (default: DATASET/class_balance.png).")
    ] = None,
) -> None:
    """Counts per split and class, duplicates, and a class-balance plot."""
    from ferflow.canonical import open_dataset
    from ferflow.plots import class_balance

    try:
        ds = open_dataset(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(f"error: {exc}", 2) from exc
    counts = {s: {c: ds.meta["splits"][s]["class_counts"][c] for c in ds.classes} for s in ds.splits}
    width = max(len(c) for c in ds.classes)
    typer.echo(
        f"{dataset}: {ds.meta['source_format']} {ds.meta['source']} "
        f"(version {ds.meta.get('source_version') or 'unversioned'}), scheme {ds.meta['label_scheme']}"
    )
    typer.echo(" " * (width + 2) + "".join(f"{s:>10}" for s in ds.splits))
    for c in ds.classes:
        typer.echo(f"  {c:<{width}}" + "".join(f"{counts[s][c]:>10}" for s in ds.splits))
    typer.echo(f"  {'total':<{width}}" + "".join(f"{ds.meta['splits'][s]['n']:>10}" for s in ds.splits))
    gate = ds.meta.get("gate", {})
    if gate:
        typer.echo(f"duplicates: {gate['duplicates']}; dropped by policy: {gate['dropped']}")
    png = class_balance(
        counts, plot or dataset / "class_balance.png", title=f"Class balance — {dataset.name}"
    )
    typer.echo(f"class-balance plot: {png}")


# --- commands below are added by stage ---

registry_app = typer.Typer(
    help="MLflow model registry: register, gate-and-promote, roll back.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
ModelNameOpt = Annotated[str, typer.Option("--name", help="registered model name.")]


@registry_app.command("register")
def registry_register(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a finished `ferflow train` run.")],
    name: ModelNameOpt = "ferflow",
) -> None:
    """Register a training run's ONNX model as a new version and alias it `challenger`."""
    from ferflow.config import RegistryConfig
    from ferflow.registry import RegistryError, register

    try:
        version = register(run_id, RegistryConfig(model_name=name))
    except RegistryError as exc:
        raise _fail(f"error: {exc}") from exc
    typer.echo(f"registered {name} version {version.version} (alias challenger) from run {run_id}")


@registry_app.command("promote")
def registry_promote(
    dataset: Annotated[Path, typer.Option(help="evaluation set: canonical folder or raw layout.")] = (
        PATHS.canonical
    ),
    source_format: Annotated[
        SourceFormat | None, typer.Option("--format", help="layout of a raw --dataset.")
    ] = (None),
    split: Annotated[str, typer.Option(help="split to evaluate on.")] = "valid",
    version: Annotated[str | None, typer.Option(help="version to gate (default: the challenger).")] = None,
    name: ModelNameOpt = "ferflow",
    margin: Annotated[float, typer.Option(help="required accuracy gain over the champion.")] = 0.0,
    f1_margin: Annotated[float, typer.Option(help="allowed macro-F1 regression.")] = 0.0,
    probe_image: Annotated[Path | None, typer.Option(help="photo for the /predict infra check.")] = None,
) -> None:
    """Gate the challenger: infra-validate, compare with the champion, promote or refuse (exit 1)."""
    from ferflow.config import RegistryConfig
    from ferflow.registry import RegistryError, promote

    splits, meta = _load_for_cli(dataset, source_format, "ferplus8", quiet=True)
    if split not in splits:
        raise _fail(f"error: {dataset} has no split {split!r}; it has {sorted(splits)}", 2)
    cfg = RegistryConfig(name, margin, f1_margin, str(probe_image) if probe_image else None)
    try:
        decision = promote(splits[split], list(meta["classes"]), version, cfg)
    except RegistryError as exc:
        raise _fail(f"error: {exc}") from exc
    typer.echo(decision.human())
    if not decision.promoted:
        raise typer.Exit(1)


@registry_app.command("rollback")
def registry_rollback(name: ModelNameOpt = "ferflow") -> None:
    """Move `champion` back to the previous champion."""
    from ferflow.config import RegistryConfig
    from ferflow.registry import RegistryError, rollback

    try:
        current, previous = rollback(RegistryConfig(model_name=name))
    except RegistryError as exc:
        raise _fail(f"error: {exc}") from exc
    typer.echo(f"champion: version {current} -> {previous}")


@registry_app.command("list")
def registry_list(name: ModelNameOpt = "ferflow") -> None:
    """Versions with aliases, gate decisions and metrics."""
    from ferflow.config import RegistryConfig
    from ferflow.registry import list_versions

    rows = list_versions(RegistryConfig(model_name=name))
    if not rows:
        typer.echo(f"no versions of {name!r}")
    for row in rows:
        aliases = ",".join(row["aliases"]) or "-"
        gate = row.get("gate.promoted", "-")
        acc = row.get("test_accuracy", row.get("gate.accuracy", "-"))
        typer.echo(
            f"v{row['version']:<4} {aliases:<22} gate={gate:<6} accuracy={acc}  {row.get('gate.reason', '')}"
        )


# --- serving (serving/service.py, BentoML; logic in ferflow.inference) ---

SERVICE_TARGET = "serving.service:FERService"


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option("--host", help="interface to bind.")] = "0.0.0.0",
    workers: Annotated[
        int | None, typer.Option(help="worker processes (default FERFLOW_WORKERS or 1).")
    ] = None,
) -> None:
    """Serve the model over HTTP: /predict, /predict_batch, /classify, /demo, probes, /metrics.

    Loads FERFLOW_MODEL_URI (e.g. models:/ferflow@champion) when MLFLOW_TRACKING_URI is set,
    else the committed reference model. FERFLOW_API_KEY turns on bearer auth.
    """
    import os
    import sys

    from ferflow.inference import ModelLoadError, ServingConfig, resolve_model

    try:
        config = ServingConfig.from_env()
        if config.model_uri is None:  # fail fast on a missing local model; registry URIs load in the server
            resolve_model(config)
    except (ValueError, ModelLoadError) as exc:
        raise _fail(f"error: {exc}", 2) from exc
    env = dict(os.environ)
    if workers is not None:
        env["FERFLOW_WORKERS"] = str(workers)
    # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and wipes them at start:
    # two servers sharing one home (two ports on one host) would erase each other's /metrics.
    if "BENTOML_HOME" not in env:
        import tempfile

        env["BENTOML_HOME"] = str(Path(tempfile.gettempdir()) / f"ferflow-bentoml-{port}")
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--host", host, "--port", str(port)]
    typer.echo(f"serving {SERVICE_TARGET} on http://{host}:{port} (demo: /demo, API docs: /)")
    os.execve(sys.executable, cmd, env)  # bentoml replaces this process: signals reach it directly


# --- hyper-parameter tuning (ferflow.tune; Optuna) ---

from ferflow.config import PrunerName, PruneSignal  # noqa: E402


@app.command("tune")
def tune_cmd(
    trials: Annotated[int, typer.Option("--trials", "-n", help="new trials (all workers together).")] = 20,
    timeout: Annotated[float, typer.Option(help="seconds per worker; 0 = no limit.")] = 0.0,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default: $FERFLOW_OPTUNA_STORAGE, else sqlite:///optuna.db)."),
    ] = None,
    study: Annotated[str, typer.Option(help="study name; an existing study is resumed.")] = "ferflow",
    workers: Annotated[int, typer.Option(help="worker processes sharing the study.")] = 1,
    pin: Annotated[
        bool | None, typer.Option("--pin/--no-pin", help="one core per worker (default: when workers > 1).")
    ] = None,
    subset: Annotated[int, typer.Option(help="cap on training images per trial; 0 = all.")] = 0,
    pruner: Annotated[PrunerName, typer.Option(help="cuts unpromising trials after an epoch.")] = (
        PrunerName.MEDIAN
    ),
    prune_on: Annotated[
        PruneSignal, typer.Option(help="what the pruner compares after each epoch: tuning accuracy or loss.")
    ] = PruneSignal.ACCURACY,
    seed: Annotated[int, typer.Option(help="TPE sampler seed.")] = 42,
    epochs: Annotated[int, typer.Option(help="epochs per trial (the pruner's steps).")] = 10,
    steps_per_epoch: Annotated[int, typer.Option(help="0 = one pass over the training images.")] = 0,
    startup_trials: Annotated[int, typer.Option(help="random trials before TPE and pruning.")] = 5,
    warmup_epochs: Annotated[
        int,
        typer.Option(help="epochs no pruner judges; the first decision follows epoch warmup + 1."),
    ] = 1,
    reduction_factor: Annotated[
        int, typer.Option(help="asha/hyperband: 1 trial in this many goes on past each rung.")
    ] = 3,
    prune_within: Annotated[
        str,
        typer.Option(help="label_scheme, width or batch_size: prune against trials of the same choice."),
    ] = "",
    horizon_correction: Annotated[
        bool,
        typer.Option(help="judge trials by accuracy plus the later gain their learning rate predicts."),
    ] = False,
    model: Annotated[str, typer.Option(help="ran, ran_fm, resnet or cnn.")] = "ran_fm",
    dataset: Annotated[
        Path, typer.Option(help="canonical dataset folder (Train only is read).")
    ] = PATHS.canonical,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the study.")] = "ferflow-tune",
    track: Annotated[bool, typer.Option(help="study and trials as MLflow runs.")] = True,
    baseline: Annotated[
        bool,
        typer.Option(help="a new study's first trial is the untuned recipe; the summary reports the gain."),
    ] = True,
    report: Annotated[
        Path | None, typer.Option(help="also write best_params.json, trials.csv and plots here.")
    ] = None,
) -> None:
    """Search the training recipe with Optuna (TPE + pruning); resumable, shared by many workers."""
    import dataclasses

    from ferflow.config import TuneConfig

    base = TuneConfig().base
    cfg = TuneConfig(
        study=study,
        storage=storage or "",
        trials=trials,
        timeout=timeout,
        workers=workers,
        subset=subset,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pruner=pruner,
        prune_on=prune_on,
        startup_trials=startup_trials,
        warmup_epochs=warmup_epochs,
        reduction_factor=reduction_factor,
        prune_within=prune_within,
        horizon_correction=horizon_correction,
        seed=seed,
        base=dataclasses.replace(base, model=model),
        experiment=experiment,
        track=track,
        baseline=baseline,
    )
    from ferflow.canonical import open_dataset
    from ferflow.tune import TuneError, finalize_study, run_study

    try:
        data = open_dataset(dataset)
        result = run_study(cfg, data, pin=pin)
        if report is not None:
            finalize_study(dataclasses.replace(cfg, track=False), out_dir=report)
    except (FileNotFoundError, ValueError, TuneError) as exc:
        raise _fail(f"error: {exc}", 2) from exc
    if report is not None:
        typer.echo(f"study report: {report}")
    if result.best_trial is None:
        raise typer.Exit(1)


# --- training and evaluation (ferflow.train, ferflow.evaluate) ---


def _load_for_cli(dataset: Path, source_format: SourceFormat | None, class_set: str, quiet: bool):
    """(splits, meta) from a canonical dir, or from a raw layout ingested in memory."""
    from ferflow.canonical import open_dataset

    if source_format is None:
        try:
            ds = open_dataset(dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(f"error: {exc} (or pass --format for a raw layout)", 2) from exc
        return {s: ds.load(s) for s in ds.splits}, ds.meta
    from ferflow.data import IngestError, ingest_to_memory
    from ferflow.validate import GateFailed

    gate = GateConfig(min_class_count=0, leakage=LeakagePolicy.DROP, drop_bad_votes=True)
    config = IngestConfig(source_format, LabelScheme.MAJORITY, class_set, gate)
    try:
        result = ingest_to_memory(dataset, config, progress=not quiet)
    except IngestError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    except GateFailed as exc:
        raise _fail(exc.report.human()) from exc
    return result.splits, result.meta


@app.command("train")
def train_cmd(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="recipe: a .yaml/.toml file, or a name in configs/ (reference, smoke)."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="override a recipe field, e.g. --set epochs=10 --set augment.erase_prob=0.3."
        ),
    ] = None,
    dataset: Annotated[
        Path, typer.Option(help="canonical dataset folder (or a raw layout with --format).")
    ] = PATHS.canonical,
    source_format: Annotated[
        SourceFormat | None, typer.Option("--format", help="ingest a raw layout in memory first.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="checkpoint/output folder.")] = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --run-dir.")] = False,
    export_dir: Annotated[
        Path | None, typer.Option(help="also write model.onnx, metrics.json, MODEL_CARD.md here.")
    ] = None,
    track: Annotated[bool, typer.Option(help="log to MLflow (MLFLOW_TRACKING_URI).")] = True,
    from_study: Annotated[
        str | None,
        typer.Option(help="Optuna study: its best trial's values replace the tuned fields."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="storage of --from-study (default: $FERFLOW_OPTUNA_STORAGE, else sqlite:///optuna.db)."
        ),
    ] = None,
    print_recipe: Annotated[
        bool, typer.Option("--print-recipe", help="print the resolved recipe as YAML and exit.")
    ] = False,
) -> None:
    """Train a model on a dataset version; track, evaluate and export it.

    The hyper-parameters are a recipe (TrainConfig): the defaults, or --config, with --set on top.
    """
    from ferflow.recipes import RecipeError, dump_recipe, load_recipe

    try:
        cfg = load_recipe(config, overrides or ())
    except RecipeError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    if print_recipe:
        typer.echo(dump_recipe(cfg), nl=False)
        return
    if from_study is not None:
        from ferflow.tune import TuneError, best_train_config

        try:
            cfg = best_train_config(from_study, storage, base=cfg)
        except TuneError as exc:
            raise _fail(f"error: {exc}", 2) from exc
        typer.echo(
            f"recipe from study {from_study!r}: lr {cfg.learning_rate:.3g}, weight decay "
            f"{cfg.weight_decay:.3g}, width {cfg.width}, dropout {cfg.dropout:.2f}, batch {cfg.batch_size}, "
            f"scheme {cfg.label_scheme.value}, rb margin {cfg.rb_margin:.3f}, erasing "
            f"{cfg.augment.erase_prob:.2f}, rotation {cfg.augment.rotation_deg:.1f}°"
        )
    from ferflow.train import train

    data = (
        _load_for_cli(dataset, source_format, "ferplus8", quiet=False)
        if source_format is not None
        else dataset
    )
    try:
        result = train(cfg, data, run_dir, resume=resume, track=track, export_dir=export_dir)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise _fail(f"error: {exc}", 2) from exc
    test = result.metrics.get("test") or result.metrics.get("tune") or {}
    typer.echo(
        f"trained {cfg.model} for {len(result.history)} epochs in {result.train_seconds / 60:.1f} min; "
        f"accuracy {100 * test.get('accuracy', float('nan')):.2f} %, "
        f"macro-F1 {test.get('macro_f1', float('nan')):.3f}  ({result.run_dir})"
    )
    if result.mlflow_run_id:
        typer.echo(f"MLflow run {result.mlflow_run_id}; ONNX model runs:/{result.mlflow_run_id}/onnx")


@app.command("evaluate")
def evaluate_cmd(
    dataset: Annotated[
        Path, typer.Option(help="canonical dataset folder, or a raw layout with --format.")
    ] = PATHS.canonical,
    model: Annotated[
        str | None,
        typer.Option(help="ONNX file/folder or MLflow URI (runs:/<id>/model); default: reference."),
    ] = None,
    source_format: Annotated[
        SourceFormat | None, typer.Option("--format", help="layout of a raw --dataset.")
    ] = None,
    split: Annotated[str | None, typer.Option(help="split to score (default: most held-out).")] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic occlusion.")] = 0,
    tta: Annotated[
        TestTimeAugmentation | None,
        typer.Option(help="test-time augmentation; default: what the model's metadata says."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON.")] = False,
) -> None:
    """Score a model: accuracy (majority protocol), macro-F1, per-class recall, occlusion."""
    import json

    from ferflow.config import CLASS_SETS
    from ferflow.evaluate import evaluate, resolve_model
    from ferflow.predict import FerClassifier

    try:
        path = resolve_model(model)
        classes = FerClassifier(path).classes
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(f"error: {exc}", 2) from exc
    class_set = next((n for n, c in CLASS_SETS.items() if list(c.classes) == classes), None)
    if source_format is not None and class_set is None:
        raise _fail(f"error: model classes {classes} match no configured class set", 2)
    splits, meta = _load_for_cli(dataset, source_format, class_set or "ferplus8", quiet=as_json)
    try:
        out = evaluate(path, splits, meta["classes"], split=split, seed=seed, tta=tta)
    except (KeyError, ValueError) as exc:
        raise _fail(f"error: {exc}", 2) from exc
    out["dataset"] = str(dataset)
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"model {out['model']} on {dataset} [{out['split']}], n = {out['n']}")
    typer.echo(
        f"accuracy {100 * out['accuracy']:.2f} %   macro-F1 {out['macro_f1']:.3f}   "
        f"occluded (16x16) {100 * out['occluded_accuracy']:.2f} %"
    )
    for c, r in out["per_class_recall"].items():
        typer.echo(f"  {c:10s} recall {100 * r:6.2f} %  (n = {out['per_class'][c]['support']})")


# --- pipeline (ferflow.pipeline; Kubeflow Pipelines) ---

pipeline_app = typer.Typer(
    help="The Kubeflow training pipeline: compile, run locally (kfp.local), submit, schedule.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="pipeline profile: smoke or default.")]
HostOpt = Annotated[
    str, typer.Option("--host", help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888.")
]
ExperimentOpt = Annotated[str, typer.Option("--experiment", help="KFP experiment.")]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", help="Kubernetes namespace (multi-user Kubeflow).")
]
PackageOpt = Annotated[
    Path | None, typer.Option("--package", help="compiled pipeline YAML (default: compile now).")
]
SourceOpt = Annotated[str | None, typer.Option("--source", help="'dvc' (project data) or a dataset path.")]
SourceFormatOpt = Annotated[SourceFormat | None, typer.Option("--format", "-f", help="layout of --source.")]
DataVersionOpt = Annotated[
    str | None, typer.Option("--data-version", help="expected DVC md5 of the data (fails on mismatch).")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model name (ferflow.models).")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="training epochs.")]
GpusOpt = Annotated[int, typer.Option("--gpus", help="accelerators for the train step.")]
NodeSelectorOpt = Annotated[
    list[str] | None,
    typer.Option("--node-selector", help="KEY=VALUE for the train step's pods (repeatable; kfp-kubernetes)."),
]
TolerationOpt = Annotated[
    list[str] | None,
    typer.Option("--toleration", help="KEY=VALUE:EFFECT for the train step (repeatable; kfp-kubernetes)."),
]
RetriesOpt = Annotated[
    int | None, typer.Option("--retries", help="retries of each step on a cluster [default: ClusterConfig].")
]


def _profile_arguments(profile: str, **overrides):
    from ferflow.config import get_profile
    from ferflow.pipeline import PipelineError, pipeline_arguments

    try:
        return pipeline_arguments(get_profile(profile), **overrides)
    except (ValueError, PipelineError) as exc:
        raise _fail(f"error: {exc}", 2) from exc


def _cluster_config(
    gpus: int, node_selector: list[str] | None, toleration: list[str] | None, retries: int | None
):
    from ferflow.config import ClusterConfig

    selectors: dict[str, str] = {}
    for item in node_selector or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"error: --node-selector {item!r} is not KEY=VALUE", 2)
        selectors[key] = value
    tolerations = []
    for item in toleration or []:
        kv, sep, effect = item.rpartition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise _fail(
                f"error: --toleration {item!r} is not KEY=VALUE:NoSchedule|PreferNoSchedule|NoExecute", 2
            )
        tolerations.append((key, value, effect))
    if retries is None:
        retries = ClusterConfig().retries
    return ClusterConfig(gpus=gpus, node_selector=selectors, tolerations=tuple(tolerations), retries=retries)


@pipeline_app.command("compile")
def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="IR YAML file to write.")] = Path(
        "ferflow-training.yaml"
    ),
    gpus: GpusOpt = 0,
    node_selector: NodeSelectorOpt = None,
    toleration: TolerationOpt = None,
    retries: RetriesOpt = None,
) -> None:
    """Compile the training pipeline to KFP IR YAML (upload it or use it with submit --package)."""
    from pipelines.driver import compile_pipeline, read_pipeline_spec

    cluster = _cluster_config(gpus, node_selector, toleration, retries)
    try:
        path = compile_pipeline(output, cluster)
    except RuntimeError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    spec, _ = read_pipeline_spec(path)  # what the cluster will parse, checked here
    typer.echo(f"{path}: pipeline {spec.pipeline_info.name!r}, {len(spec.components)} components")


@pipeline_app.command("run")
def pipeline_run(
    profile: ProfileOpt = "default",
    source: SourceOpt = None,
    source_format: SourceFormatOpt = None,
    data_version: DataVersionOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    min_class_count: Annotated[int | None, typer.Option("--min-class-count", help="gate minimum.")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="reuse unchanged steps.")] = True,
    pipeline_root: Annotated[
        Path | None, typer.Option("--pipeline-root", help="outputs and cache (default artifacts/pipeline).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="stream every step's log.")] = False,
) -> None:
    """Run the training pipeline on this machine (kfp.local); ends with the run summary."""
    from ferflow.pipeline import PipelineError
    from pipelines.driver import run_local

    args = _profile_arguments(
        profile,
        source=source,
        source_format=source_format.value if source_format else None,
        data_version=data_version,
        model_name=model,
        epochs=epochs,
        min_class_count=min_class_count,
    )
    typer.echo(f"ferflow pipeline, profile {profile}: " + ", ".join(f"{k}={v}" for k, v in args.items()))
    try:
        run = run_local(args, pipeline_root=pipeline_root, cache=cache, verbose=verbose)
    except PipelineError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    typer.echo(run.render())
    if not run.succeeded:
        raise typer.Exit(1)


@pipeline_app.command("submit")
def pipeline_submit(
    host: HostOpt,
    profile: ProfileOpt = "default",
    experiment: ExperimentOpt = "ferflow",
    run_name: Annotated[str | None, typer.Option("--run-name", help="run display name.")] = None,
    namespace: NamespaceOpt = None,
    package: PackageOpt = None,
    data_version: DataVersionOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
) -> None:
    """Create one run of the training pipeline on a Kubeflow cluster."""
    from ferflow.pipeline import PipelineError
    from pipelines.driver import submit

    args = _profile_arguments(profile, data_version=data_version, model_name=model, epochs=epochs)
    try:
        run_id = submit(host, args, experiment, run_name, namespace, package)
    except PipelineError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    typer.echo(f"submitted run {run_id} (profile {profile}) to {host}")


@pipeline_app.command("schedule")
def pipeline_schedule(
    host: HostOpt,
    cron: Annotated[
        str, typer.Option("--cron", help="6-field cron: second minute hour day month weekday.")
    ] = "0 0 3 * * *",
    profile: ProfileOpt = "default",
    experiment: ExperimentOpt = "ferflow",
    name: Annotated[str | None, typer.Option("--name", help="recurring run name.")] = None,
    namespace: NamespaceOpt = None,
    package: PackageOpt = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", help="runs at once.")] = 1,
    catchup: Annotated[bool, typer.Option("--catchup/--no-catchup", help="backfill missed runs.")] = False,
) -> None:
    """Create a recurring run (scheduled retraining) of the training pipeline."""
    from ferflow.pipeline import PipelineError
    from pipelines.driver import schedule

    args = _profile_arguments(profile)
    try:
        rr = schedule(host, cron, args, experiment, name, namespace, max_concurrency, catchup, package)
    except PipelineError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    typer.echo(f"recurring run {rr.recurring_run_id} ({cron}, profile {profile}) created on {host}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
