"""Data: a validated loader for MAD-layout folders and the LEGO-MAD generator.

- :func:`load_mad_class` reads one class folder (training views with cameras, test samples with masks).
- :func:`default_dataset` returns the default LEGO-MAD dataset, generating it on first use.
- ``splatlab data check DIR`` validates a folder; ``splatlab data make`` generates one.
"""

from splatlab.data.mad import (
    DEFECT_TYPES,
    MADClass,
    TestPoses,
    TestSample,
    TrainViews,
    list_classes,
    load_mad_class,
    load_test_poses,
    natural_key,
)
from splatlab.data.make import MakeConfig, data_dir, default_dataset, make_dataset, shipped_classes

__all__ = [
    "DEFECT_TYPES",
    "MADClass",
    "MakeConfig",
    "TestPoses",
    "TestSample",
    "TrainViews",
    "data_dir",
    "default_dataset",
    "list_classes",
    "load_mad_class",
    "load_test_poses",
    "make_dataset",
    "natural_key",
    "shipped_classes",
]
