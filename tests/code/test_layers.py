"""The layer contract (pyproject.toml, ``[tool.importlinter]``) covers every core module.

``make test`` runs ``lint-imports``, which checks the contracts; this test keeps the contract's
list of core modules complete, so a new module in ``ferflow/`` cannot escape it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS_IN_CORE_PACKAGE = {"ferflow.cli", "ferflow.__main__"}  # the CLI: adapters beside the stages


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def _ferflow_modules() -> set[str]:
    package = ROOT / "ferflow"
    modules = {f"ferflow.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"ferflow.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    return modules


def test_every_core_module_is_forbidden_to_import_adapters():
    core = _contracts()["The core imports no adapter"]
    assert set(core["forbidden_modules"]) == {"ferflow.cli", "components", "pipelines", "serving"}
    listed = set(core["source_modules"])
    assert listed == _ferflow_modules() - ADAPTERS_IN_CORE_PACKAGE


def test_every_adapter_package_is_a_root_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == {"ferflow", "components", "pipelines", "serving"}
    assert all((ROOT / p / "__init__.py").is_file() for p in config["root_packages"])
