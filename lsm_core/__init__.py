"""lsm_core: from DIC microscope images of blood stem cells to per-cell class probabilities.

The library behind the LSM classifier web app. It never imports Streamlit.
"""

from lsm_core.errors import LsmError

__all__ = ["LsmError"]
__version__ = "0.1.0"
