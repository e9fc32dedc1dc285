"""splatlab: pose-agnostic 3D anomaly detection with 3D Gaussian splatting, after SplatPose.

Importing the package is cheap and has no side effects; submodules are imported where they are used.
``splatlab.load_detector(run_dir)`` is :func:`splatlab.detect.load_detector`, imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_detector"]


def load_detector(run_dir, **kwargs):
    """The detector of a run folder; see :func:`splatlab.detect.load_detector`."""
    from splatlab.detect import load_detector as _load_detector

    return _load_detector(run_dir, **kwargs)
