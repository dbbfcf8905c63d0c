"""Recipes as files (ferflow.recipes): typed loading, overrides, one-line errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferflow.cli import app
from ferflow.config import EXPORT_ONLY_FIELDS, LabelScheme, TrainConfig
from ferflow.recipes import RecipeError, dump_recipe, load_recipe, recipe_names, to_dict

ROOT = Path(__file__).resolve().parents[2]


def test_reference_recipe_is_the_committed_models_configuration():
    recorded = json.loads((ROOT / "models" / "reference" / "metrics.json").read_text())["config"]
    recipe = to_dict(load_recipe("reference"))
    # fields added after the model was trained hold their defaults in the recipe
    defaults = to_dict(TrainConfig())
    recorded["augment"] = {**defaults["augment"], **recorded["augment"]}
    fit_fields = set(recorded) - EXPORT_ONLY_FIELDS
    assert {k: recipe[k] for k in fit_fields} == {k: recorded[k] for k in fit_fields}


def test_named_recipes_ship_and_load():
    assert {"reference", "robust", "smoke"} <= set(recipe_names())
    smoke = load_recipe("smoke")
    assert smoke.epochs == 1 and smoke.depths == (1, 1, 1, 1)
    assert smoke.learning_rate == TrainConfig().learning_rate  # unnamed fields keep the defaults


def test_overrides_are_typed_and_nested():
    cfg = load_recipe(
        "smoke", ["epochs=3", "augment.erase_prob=0.4", "depths=2,2,2", "label_scheme=majority"]
    )
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.augment.erase_prob == 0.4 and cfg.augment.rotation_deg == TrainConfig().augment.rotation_deg
    assert cfg.depths == (2, 2, 2)
    assert cfg.label_scheme is LabelScheme.MAJORITY
    assert load_recipe(None, ["learning_rate=1"]).learning_rate == 1.0  # an int where a float is due


def test_yaml_and_toml_recipes_agree_and_round_trip(tmp_path):
    (tmp_path / "r.toml").write_text('width = 24\nlabel_scheme = "probability"\n[augment]\nflip = false\n')
    (tmp_path / "r.yaml").write_text("width: 24\nlabel_scheme: probability\naugment: {flip: false}\n")
    from_toml, from_yaml = load_recipe(tmp_path / "r.toml"), load_recipe(tmp_path / "r.yaml")
    assert from_toml == from_yaml and from_yaml.width == 24 and not from_yaml.augment.flip
    (tmp_path / "dumped.yaml").write_text(dump_recipe(from_yaml))
    assert load_recipe(tmp_path / "dumped.yaml") == from_yaml
    weighted = load_recipe(tmp_path / "r.yaml", ["source_weights={photos: 2, ferplus: 0.5}"])
    assert weighted.source_weights == {"photos": 2.0, "ferplus": 0.5}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lerning_rate=0.1"], "unknown key 'lerning_rate'"),
        (["augment.flipp=true"], "unknown key 'flipp'"),
        (["epochs=ten"], "epochs: expected an integer, got 'ten'"),
        (["epochs=2.5"], "epochs: expected an integer, got 2.5"),
        (["quantize_int8=maybe"], "quantize_int8: expected true or false"),
        (["label_scheme=votes"], "'votes' is not one of majority, probability"),
        (["augment.scale_range=[1.0]"], "expected 2 values, got 1"),
        (["epochs"], "expected KEY=VALUE"),
        (["model=vgg"], "model 'vgg' is not one of"),
        (["tune_fraction=1.5"], "tune_fraction must be in (0, 1)"),
        (["source_weights=3"], "source_weights: expected a mapping such as {photos: 2.0}"),
        (["source_weights={photos: lots}"], "source_weights.photos: expected a number, got 'lots'"),
        (["source_weights={photos: -1}"], "source_weights must be >= 0"),
        (["augment.blur_prob=1.5"], "augment.blur_prob must be in [0, 1]"),
        (["augment.downscale_side=48"], "augment.downscale_side must be in [4, 40]"),
        (["augment.scale_range=[1.2, 0.9]"], "augment.scale_range must be [low, high]"),
        (["init_weights=/nonexistent/w.weights.h5"], "init_weights /nonexistent/w.weights.h5 is not a file"),
        (["teacher=/nonexistent/model.onnx"], "teacher /nonexistent/model.onnx is not a file"),
        (["teacher_weight=1.5"], "teacher_weight must be in [0, 1]"),
        (["teacher=models/reference/model.onnx", "label_scheme=multi_target"], "need soft targets"),
    ],
)
def test_bad_overrides_name_the_fault(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe("smoke", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_recipe_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("width: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: a recipe is a mapping"):
        load_recipe(bad)
    bad.write_text("widht: 8\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: unknown key 'widht'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"no recipe 'referense'.*reference"):
        load_recipe("referense")


def test_cli_prints_the_resolved_recipe_and_refuses_bad_keys_in_one_line(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(app, ["train", "--config", "smoke", "--set", "epochs=4", "--print-recipe"])
    assert shown.exit_code == 0, shown.output
    assert "epochs: 4\n" in shown.output and "depths: [1, 1, 1, 1]\n" in shown.output
    bad = runner.invoke(
        app, ["train", "--config", "smoke", "--set", "epoch=4", "--run-dir", str(tmp_path / "r")]
    )
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --set epoch=4: unknown key 'epoch'") and bad.output.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_tuning_config_takes_the_same_typed_overrides(tmp_path):
    from ferflow.config import PrunerName
    from ferflow.recipes import load_tune_config

    path = tmp_path / "study.yaml"
    path.write_text("pruner: asha\nreduction_factor: 4\nbase: {model: cnn}\nspace: {width: [16, 24]}\n")
    cfg = load_tune_config(path, ["horizon_correction=true", "base.epochs=3"])
    assert cfg.pruner is PrunerName.ASHA and cfg.reduction_factor == 4 and cfg.horizon_correction
    assert cfg.base.model == "cnn" and cfg.base.epochs == 3 and cfg.space.width == (16, 24)
    assert cfg.base.early_stopping_patience == 0  # the tuning base keeps its own defaults
    with pytest.raises(RecipeError, match="pruner: 'asa' is not one of"):
        load_tune_config(None, ["pruner=asa"])
    with pytest.raises(RecipeError, match="model 'vgg' is not one of"):
        load_tune_config(None, ["base.model=vgg"])


def test_unset_optional_fields_stay_out_of_the_plain_form_and_round_trip(tmp_path):
    cfg = load_recipe("robust")
    assert cfg.init_weights is None and "init_weights" not in to_dict(cfg)
    (tmp_path / "w.weights.h5").write_bytes(b"")
    started = load_recipe("robust", [f"init_weights={tmp_path / 'w.weights.h5'}"])
    assert to_dict(started)["init_weights"] == str(tmp_path / "w.weights.h5")
    (tmp_path / "dumped.yaml").write_text(dump_recipe(cfg))
    assert load_recipe(tmp_path / "dumped.yaml") == cfg
