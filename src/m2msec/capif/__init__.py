"""CAPIF (3GPP TS 29.222 / TS 33.122): the contract and, later, the CAPIF core function: docs/capif.md.

- ``specs/3gpp/``: the official Rel-18 OpenAPI files, vendored unmodified (specs/3gpp/SOURCE.md);
- :mod:`m2msec.capif.openapi`: bundles one self-contained document per CAPIF API into ``capif/bundled/``;
- :mod:`m2msec.capif.models`: pydantic v2 models generated from those bundles (``scripts/gen_capif_models.sh``);
- :mod:`m2msec.capif.schema`: a JSON-schema validator of request/response bodies built from the bundles, not from the
  models.
"""
