"""Root pytest configuration, loaded before any test module (and before the notebooks' kernels start).

torch's OpenMP threads spin after each op and starve the Numba renderer's threads (2-5x slower renders on
2 cores). The setting only takes effect before torch is imported, and kernels started by nbmake inherit it.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
