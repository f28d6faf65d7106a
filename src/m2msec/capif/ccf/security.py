"""CAPIF Security (TS 29.222 §8.5, `/capif-security/v1`): trustedInvokers, security method selection, AEFPSK, the
token endpoint.
"""

from __future__ import annotations
