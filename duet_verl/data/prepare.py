"""``duet-verl prepare-data``: the benchmark datasets as verl RL parquet files, one per dataset.

Each row has ``data_source`` (which verifier scores it, see ``duet_verl/verifiers``), a chat ``prompt`` of one user
message, ``ability``, ``reward_model = {"style": "rule", "ground_truth": ...}`` and ``extra_info`` (``index``: the
row's position in its source, ``split``, and whatever its verifier needs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duet_verl.data.inputs import DataError, hub_rows, local_file, local_rows
from duet_verl.verifiers.answers import gsm8k_reference, last_boxed
from duet_verl.verifiers.registry import DATA_SOURCES

__all__ = ["DATASETS", "GPQA_SEED", "MATH_SUFFIX", "SUMMARY_FILE", "DatasetSpec", "prepare_data"]

MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."  # the DUET paper's
GPQA_SUFFIX = "Please reason step by step, and put the letter of your final answer (A, B, C or D) within \\boxed{}."
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (with its imports) in one "
    "```python code block."
)
GPQA_SEED = 2605  # the options of row i are shuffled by random.Random(f"{GPQA_SEED}/{i}")
SUMMARY_FILE = "prepare_data.json"


@dataclass(frozen=True)
class DatasetSpec:
    """One output file: where its rows come from and how a source row becomes a verl row."""

    name: str  # --datasets name and the file name ``{name}.parquet`` (also the --from-dir file stem)
    data_source: str  # a key of duet_verl.verifiers.DATA_SOURCES
    hub: tuple[str, str | None, str]  # Hugging Face dataset id, config, split
    columns: tuple[str, ...]  # source columns every row must have
    split: str  # extra_info.split
    ability: str
    build: Callable[[int, Mapping[str, Any], str], tuple[str, str, dict[str, Any]] | None]
    # (position, source row, where) -> (prompt text, ground truth, extra_info fields) or None (no answer: dropped)


def _text(row: Mapping[str, Any], column: str, where: str) -> str:
    value = row[column]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise DataError(f"{where}: column {column!r} must be a non-empty string, got {value!r}")
    return str(value).strip()


def _math_prompt(problem: str) -> str:
    return f"{problem}\n{MATH_SUFFIX}"


def _math_train(position: int, row: Mapping[str, Any], where: str):
    answer = last_boxed(str(row["solution"] or ""))
    if not answer:
        return None
    return _math_prompt(_text(row, "problem", where)), answer, {}


def _with_answer(position: int, row: Mapping[str, Any], where: str):
    return _math_prompt(_text(row, "problem", where)), _text(row, "answer", where), {}


def _gsm8k(position: int, row: Mapping[str, Any], where: str):
    try:
        reference = gsm8k_reference(_text(row, "answer", where))
    except ValueError as err:
        raise DataError(f"{where}: {err}") from err
    return _math_prompt(_text(row, "question", where)), reference, {}


def _gpqa(position: int, row: Mapping[str, Any], where: str):
    correct = _text(row, "Correct Answer", where)
    options = [correct, *(_text(row, f"Incorrect Answer {k}", where) for k in (1, 2, 3))]
    random.Random(f"{GPQA_SEED}/{position}").shuffle(options)
    letters = "ABCD"
    listed = "\n".join(f"{letter}) {option}" for letter, option in zip(letters, options, strict=True))
    prompt = f"{_text(row, 'Question', where)}\n\n{listed}\n\n{GPQA_SUFFIX}"
    return prompt, letters[options.index(correct)], {}


def _humaneval(position: int, row: Mapping[str, Any], where: str):
    code = str(row["prompt"])
    if not code.strip():
        raise DataError(f"{where}: column 'prompt' must be a non-empty string")
    prompt = f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{code}```"
    extra = {
        "task_id": _text(row, "task_id", where),
        "prompt_code": code,
        "test": _text(row, "test", where),
        "entry_point": _text(row, "entry_point", where),
    }
    return prompt, str(row["canonical_solution"] or ""), extra


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "math_train",
            "hendrycks_math",
            ("DigitalLearningGmbH/MATH-lighteval", None, "train"),
            ("problem", "solution"),
            "train",
            "math",
            _math_train,
        ),
        DatasetSpec(
            "math500",
            "math500",
            ("HuggingFaceH4/MATH-500", None, "test"),
            ("problem", "answer"),
            "test",
            "math",
            _with_answer,
        ),
        DatasetSpec(
            "aime2024",
            "aime2024",
            ("HuggingFaceH4/aime_2024", None, "train"),
            ("problem", "answer"),
            "test",
            "math",
            _with_answer,
        ),
        DatasetSpec("gsm8k", "gsm8k", ("openai/gsm8k", "main", "test"), ("question", "answer"), "test", "math", _gsm8k),
        DatasetSpec(
            "humaneval",
            "humaneval",
            ("openai/openai_humaneval", None, "test"),
            ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
            "test",
            "code",
            _humaneval,
        ),
        DatasetSpec(
            "gpqa_diamond",
            "gpqa_diamond",
            ("Idavidrein/gpqa", "gpqa_diamond", "train"),
            ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
            "test",
            "science",
            _gpqa,
        ),
    )
}
if not {spec.data_source for spec in DATASETS.values()} <= set(DATA_SOURCES):
    raise RuntimeError("every dataset's data_source must have a verifier in duet_verl.verifiers")
OVERLAP_REFERENCE = "math500"  # math_train drops the problems of this dataset


@dataclass
class _Counts:
    read: int = 0
    dropped_no_answer: int = 0
    dropped_overlap: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def _source_rows(spec: DatasetSpec, from_dir: Path | None) -> tuple[str, Iterator[tuple[str, dict[str, Any]]]]:
    if from_dir is None:
        hub_id, config, split = spec.hub
        return f"hf:{hub_id}{f'/{config}' if config else ''}[{split}]", hub_rows(hub_id, config, split)
    path = local_file(from_dir, spec.name)
    return str(path), local_rows(path)


def _normalized(problem: str) -> str:
    return " ".join(problem.split())


def _checked(rows: Iterable[tuple[str, dict[str, Any]]], columns: Sequence[str]):
    for where, row in rows:
        missing = [column for column in columns if column not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing} (the row has {sorted(row)})")
        yield where, row


def _convert(spec: DatasetSpec, rows: Iterable[tuple[str, dict[str, Any]]], exclude: set[str]) -> _Counts:
    counts = _Counts()
    for position, (where, row) in enumerate(_checked(rows, spec.columns)):
        counts.read += 1
        built = spec.build(position, row, where)
        if built is None:
            counts.dropped_no_answer += 1
            continue
        if exclude and _normalized(str(row["problem"])) in exclude:
            counts.dropped_overlap += 1
            continue
        prompt, ground_truth, extra = built
        counts.rows.append(
            {
                "data_source": spec.data_source,
                "prompt": [{"role": "user", "content": prompt}],
                "ability": spec.ability,
                "reward_model": {"style": "rule", "ground_truth": ground_truth},
                "extra_info": {"index": position, "split": spec.split, **extra},
            }
        )
    return counts


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _write_if_changed(path: Path, content: bytes) -> bool:
    """Write atomically unless the file already holds exactly ``content``; True when written."""
    if path.is_file() and path.read_bytes() == content:
        return False
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)
    return True


def _log(message: str) -> None:
    print(f"[prepare-data] {message}", file=sys.stderr, flush=True)


def prepare_data(out: str | Path, names: Sequence[str] | None = None, from_dir: str | Path | None = None) -> dict:
    """Write ``{name}.parquet`` for each chosen dataset (default: all) into ``out``, plus ``prepare_data.json``
    (the counts of every dataset prepared so far); return this run's summary. Raises :class:`DataError`."""
    names = list(names or DATASETS)
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    out, source_dir = Path(out), Path(from_dir) if from_dir is not None else None
    if source_dir is not None and not source_dir.is_dir():
        raise DataError(f"{source_dir}: --from-dir is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = DATASETS[name]
        exclude: set[str] = set()
        if name == "math_train":
            reference = DATASETS[OVERLAP_REFERENCE]
            label, rows = _source_rows(reference, source_dir)
            _log(f"{name}: reading {label} to drop MATH-500's problems")
            exclude = {_normalized(_text(row, "problem", where)) for where, row in _checked(rows, ("problem",))}
        label, rows = _source_rows(spec, source_dir)
        _log(f"{name}: reading {label}")
        counts = _convert(spec, rows, exclude)
        if not counts.rows:
            raise DataError(f"{label}: no usable rows (read {counts.read})")
        path = out / f"{name}.parquet"
        content = _parquet_bytes(counts.rows)
        written = _write_if_changed(path, content)
        summary[name] = {
            "file": path.name,
            "data_source": spec.data_source,
            "source": label,
            "read": counts.read,
            "dropped_no_answer": counts.dropped_no_answer,
            "dropped_overlap": counts.dropped_overlap,
            "written": len(counts.rows),
            "sha256": hashlib.sha256(content).hexdigest(),
            "status": "written" if written else "unchanged",
        }
        state = "wrote" if written else "unchanged, kept"
        _log(
            f"{name}: {state} {path} ({len(counts.rows)} rows; read {counts.read}, "
            f"no answer {counts.dropped_no_answer}, overlap {counts.dropped_overlap})"
        )
    record_path = out / SUMMARY_FILE
    try:
        recorded = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except json.JSONDecodeError as err:
        raise DataError(f"{record_path}: not valid JSON ({err.msg}); delete it to start a fresh record") from err
    recorded.update(summary)
    _write_if_changed(record_path, (json.dumps(dict(sorted(recorded.items())), indent=2) + "\n").encode())
    return summary
