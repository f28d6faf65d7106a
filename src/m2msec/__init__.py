"""m2msec: oneM2M TS-0003 security association frameworks and 3GPP CAPIF security for Python."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
