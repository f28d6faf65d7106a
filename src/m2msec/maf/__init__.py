"""The M2M Authentication Function (TS-0003 §8.8) and its clients: docs/maf.md is the wire contract.

The service side (procedures, the ASGI application, ``m2msec maf serve``) and the client side (the MAF Handshake,
Key Registration for Entity A, Key Retrieval for Entity B) live in this package's modules.
"""
