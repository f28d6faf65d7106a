"""Publish Service (TS 29.222 §8.2, `/published-apis/v1`): an APF publishes, reads, updates and deletes its service
API descriptions.
"""

from __future__ import annotations
