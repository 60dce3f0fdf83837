"""Loads the example tasks' JSONL files (next to this file) without the Hugging Face hub.

lm-eval calls ``load`` through ``custom_dataset: !function utils.load`` in each task YAML,
with ``dataset_kwargs`` (``data_file``) and the task's ``metadata`` as keyword arguments.
"""

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent


def load(data_file: str, split: str = "test", **_metadata: Any) -> datasets.DatasetDict:
    """The rows of ``data_file`` (relative to this directory) as a one-split ``DatasetDict``."""
    with open(HERE / data_file, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})
