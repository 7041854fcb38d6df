"""Project-level invariants: lint, framework-free core, README and CI agree."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: install the project with its [test] extra")
    return [exe]


def test_ruff_lint_and_format_are_clean():
    lint = subprocess.run([*_ruff(), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_core_imports_neither_verl_nor_vllm():
    for path in (ROOT / "duet_verl" / "core").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(verl|vllm)\b", path.read_text(), re.M), path
    code = (
        "import sys, duet_verl.core; bad = [m for m in sys.modules if m.split('.')[0] in ('verl', 'vllm')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines()[:12] if ln.startswith("python3 ")]
    assert len(lines) == 2, lines
    demo, tests = lines
    assert "duet-verl" in demo and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'grep -m1 -E "^python3 .*\[test\]" README.md' in ci  # CI takes the command from the README


def test_readme_layout_matches_the_package_tree():
    text = (ROOT / "README.md").read_text()
    block = text.split("### The layout", 1)[1].split("```", 2)[1]
    listed = {ln.split()[0].rstrip("/") for ln in block.splitlines()[2:] if ln.startswith("  ") and ln.strip()}
    package = ROOT / "duet_verl"
    actual = {p.name.removesuffix(".py") + (".py" if p.suffix == ".py" else "") for p in package.iterdir()}
    actual -= {"__init__.py", "__pycache__"}
    assert listed == actual
    for path in re.findall(r"`((?:duet_verl/)?(?:adapters|core|cpu|demo|tools)/[\w/]+\.py)", text):
        relative = path.removeprefix("duet_verl/")
        assert (package / relative).exists(), path


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r'^\s*"?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^";\s]+)', line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def test_vllm_versions_have_one_home_and_the_install_lists_agree():
    import tomllib

    from duet_verl.vllm_support import VLLM_VERSION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["gpu"] == [f"vllm=={VLLM_VERSION}"]
    shim = tomllib.loads((ROOT / "duet_verl" / "vllm_support" / "cpu_shim" / "pyproject.toml").read_text())
    assert shim["project"]["name"] == "vllm" and shim["project"]["version"] == f"{VLLM_VERSION}+cpu"
    cpu = _pins((ROOT / "duet_verl" / "vllm_support" / "requirements-cpu.txt").read_text().splitlines())
    ours = _pins(project["dependencies"])
    shared = set(cpu) & set(ours)
    assert {"numpy", "transformers", "fastapi"} <= shared
    assert {name: cpu[name] for name in shared} == {name: ours[name] for name in shared}
    assert not any(name.startswith("torch") for name in cpu)  # install.py installs the one torch


def test_the_gpu_extra_resolves():
    """``pip install '.[gpu]'`` must be satisfiable (a dry run against the package index)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", ".[gpu]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
