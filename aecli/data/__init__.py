"""Data sources into validated, scaled float32 arrays (or streams, for data larger than memory).

One module per concern: `arrays` (what every source becomes), `scaling`, `labels`; one per
source family (`builtin`, `files`, `shards`, `series`, `sequences`), listed in `sources`;
`loading` is the entry point.
Only numpy and the standard library load at import: `aecli validate` reads shapes through here.
"""

from aecli.data.arrays import Dataset, RawData, Samples, fit_to_model, sample_shape_of
from aecli.data.labels import label_codes, label_name, present_labels
from aecli.data.loading import TrainingData, load_dataset, load_for_model, open_training_data
from aecli.data.scaling import TENSOR_ALIGNMENT, Scaling, aligned_empty, fit_scaling
from aecli.data.shards import ShardedData
from aecli.data.sources import is_streamed, peek_sample_shape, read_source

__all__ = [
    "TENSOR_ALIGNMENT",
    "Dataset",
    "RawData",
    "Samples",
    "Scaling",
    "ShardedData",
    "TrainingData",
    "aligned_empty",
    "fit_scaling",
    "fit_to_model",
    "is_streamed",
    "label_codes",
    "label_name",
    "load_dataset",
    "load_for_model",
    "open_training_data",
    "peek_sample_shape",
    "present_labels",
    "read_source",
    "sample_shape_of",
]
