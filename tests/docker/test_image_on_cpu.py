"""The image recipe, read without a docker engine: verl's vLLM image pinned by digest, the project's pins, and the
closing checks; and ``docker/run.sh``'s command line (through a stand-in ``docker`` that records its arguments)."""

import os
import re
import subprocess
from pathlib import Path

import dockerfile
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from duet_verl.vllm_support import VLLM_VERSION

ROOT = Path(__file__).parents[2]
# pyproject.toml dependencies the image must install at exactly the project's version
IMAGE_PINS = {"verl", "transferqueue", "transformers", "tokenizers"}


def project_pins() -> dict[str, str]:
    """``{canonical name: version}`` of pyproject.toml's exact pins, plus duet-verl's own version."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins | {"duet-verl": project["version"]}


def image_problems(text: str, pins: dict[str, str]) -> list[str]:
    """What is wrong with a Dockerfile ``text`` for this project (empty when nothing is)."""
    instructions = dockerfile.parse_string(text)
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.cmd == "ARG" and "=" in ins.value[0]:
            name, _, default = ins.value[0].partition("=")
            args[name] = default

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)

    problems = []
    bases = [expand(ins.value[0]) for ins in instructions if ins.cmd == "FROM"]
    tag = VLLM_VERSION.replace(".", "")[:3]  # 0.24.0 -> 024, verl's image tag vllm024.*
    if len(bases) != 1 or not re.fullmatch(rf"verlai/verl:vllm{tag}\.[\w.-]+@sha256:[0-9a-f]{{64}}", bases[0]):
        problems.append(f"base image {bases}: want one verlai/verl:vllm{tag}.* pinned by @sha256 digest")
    runs = " ".join(expand(ins.value[0]) for ins in instructions if ins.cmd == "RUN")
    installed = {canonicalize_name(n): v for n, v in re.findall(r"\b([A-Za-z][\w.-]*)==([\w.+]+)", runs)}
    for name in sorted(IMAGE_PINS - set(installed)):
        problems.append(f"{name} is not installed at a pinned version")
    for name, version in sorted(installed.items()):
        if name in pins and pins[name] != version:
            problems.append(f"{name}=={version} in the image, {pins[name]} in pyproject.toml")
    if args.get("DUET_VERL_VERSION") != pins["duet-verl"]:
        problems.append(f"DUET_VERL_VERSION={args.get('DUET_VERL_VERSION')}, pyproject.toml has {pins['duet-verl']}")
    last = [expand(ins.value[0]) for ins in instructions[-2:]]
    if [ins.cmd for ins in instructions[-2:]] != ["RUN", "RUN"] or not (
        re.fullmatch(r"python3? -m pip check", last[0]) and "assert_registered()" in last[1]
    ):
        problems.append(f"the image must end with `pip check` and the registration check, ends with {last}")
    return problems


def test_the_dockerfile_pins_the_base_by_digest_and_the_versions_of_pyproject():
    assert image_problems((ROOT / "docker" / "Dockerfile").read_text(), project_pins()) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("@sha256:b867883b", "@sha256:b86788", "base image"),  # a digest of the wrong length
        ("verlai/verl:vllm024.dev2@sha256:", "verlai/verl:vllm024.latest#", "base image"),
        ("ARG VERL_VERSION=0.9.1", "ARG VERL_VERSION=0.9.0", "verl==0.9.0 in the image, 0.9.1 in pyproject.toml"),
        ('"tokenizers==${TOKENIZERS_VERSION}"', "", "tokenizers is not installed"),
        ("ARG DUET_VERL_VERSION=0.1.0", "ARG DUET_VERL_VERSION=0.2.0", "DUET_VERL_VERSION=0.2.0"),
        ("RUN python3 -m pip check\n", "", "must end with `pip check`"),
    ],
)
def test_the_checker_catches_each_kind_of_drift(old, new, problem):
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert old in text
    problems = image_problems(text.replace(old, new), project_pins())
    assert any(problem in p for p in problems), problems


def run_script(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``bash docker/run.sh args`` with a stand-in docker that writes its arguments, one per line."""
    record = tmp_path / "docker_args"
    fake = tmp_path / "fake_docker"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    settings = {"METHOD", "BUDGET", "ENGINE", "NNODES", "DRY_RUN", "HF_HOME", "DATA_DIR", "CKPT_DIR", "MODEL"}
    environ = {k: v for k, v in os.environ.items() if k not in settings} | {"DOCKER": str(fake), **env}
    out = subprocess.run(["bash", str(ROOT / "docker" / "run.sh"), *args], capture_output=True, text=True, env=environ)
    return out, record.read_text().splitlines() if record.exists() else []


def test_run_script_mounts_data_and_checkpoints_and_passes_the_settings(tmp_path):
    data, ckpt, hf = tmp_path / "data", tmp_path / "ckpt", tmp_path / "hf"
    env = dict(DATA_DIR=str(data), CKPT_DIR=str(ckpt), HF_HOME=str(hf), METHOD="grpo", BUDGET="0.5")
    out, argv = run_script(tmp_path, "qwen3_4b", "trainer.total_training_steps=3", **env)
    assert out.returncode == 0, out.stderr
    assert argv[:2] == ["run", "--rm"] and "--gpus" in argv and ckpt.is_dir()
    flags = list(zip(argv, argv[1:], strict=False))
    assert ("-v", f"{data}:/data/duet:ro") in flags and ("-v", f"{ckpt}:/checkpoints") in flags
    assert ("-v", f"{hf}:/root/.cache/huggingface") in flags
    for setting in ("DATA_DIR=/data/duet", "CKPT_DIR=/checkpoints", "METHOD=grpo", "BUDGET=0.5"):
        assert ("-e", setting) in flags, setting
    assert not any(a.startswith(("ENGINE=", "NNODES=")) for a in argv)  # unset here: the recipe's defaults hold
    assert argv[-4:] == ["duet-verl:0.1.0", "bash", "recipes/qwen3_4b.sh", "trainer.total_training_steps=3"]


@pytest.mark.parametrize("recipe", ["common", "qwen9_1b"])
def test_run_script_refuses_what_is_not_a_recipe(tmp_path, recipe):
    out, argv = run_script(tmp_path, recipe)
    assert out.returncode == 2 and f"RECIPE={recipe}" in out.stderr and argv == []
