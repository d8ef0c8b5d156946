"""Data shipped with Routegate: the default routing records and model descriptions a router is
trained on when no other data is given (see SOURCE.md and docs/routing-records.md)."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_TRAIN = DATA_DIR / "default_train.jsonl"
DEFAULT_DESCRIPTIONS = DATA_DIR / "default_descriptions.json"
