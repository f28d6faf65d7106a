"""Interop tests against real third-party TLS peers (openssl, gnutls).

This folder is a package on purpose: its conftest.py is then imported as ``interop.conftest`` and does
not replace the top-level ``conftest`` module that other test folders import constants from.
"""
