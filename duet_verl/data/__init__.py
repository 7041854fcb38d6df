"""``duet-verl prepare-data``: benchmark datasets as verl RL parquet files (see :mod:`duet_verl.data.prepare`)."""

from duet_verl.data.inputs import DataError
from duet_verl.data.prepare import DATASETS, prepare_data

__all__ = ["DATASETS", "DataError", "prepare_data"]
