"""splatlab: pose-agnostic 3D anomaly detection with 3D Gaussian splatting, after SplatPose.

Importing the package is cheap and has no side effects; submodules are imported where they are used.
"""

__version__ = "0.1.0"
