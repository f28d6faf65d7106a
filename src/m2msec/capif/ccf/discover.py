"""Discover Service (TS 29.222 §8.1, `/service-apis/v1/allServiceAPIs`): an onboarded invoker discovers the
published service APIs.
"""

from __future__ import annotations
