"""CAPIF (3GPP TS 29.222 / TS 33.122): the contract, the CAPIF core function's building blocks, later the CCF, the
AEF and the invoker side (docs/capif.md).

- ``specs/3gpp/``: the official Rel-18 OpenAPI files, vendored unmodified (specs/3gpp/SOURCE.md);
- :mod:`m2msec.capif.openapi`: bundles one self-contained document per CAPIF API into ``capif/bundled/``;
- :mod:`m2msec.capif.models`: pydantic v2 models generated from those bundles (``scripts/gen_capif_models.py``);
- :mod:`m2msec.capif.schema`: a JSON-schema validator of request/response bodies built from the bundles, not from the
  models;
- :mod:`m2msec.capif.kdf`: AEFPSK (TS 33.122 Annex A.1) over the TS 33.220 KDF;
- :mod:`m2msec.capif.security_method`: the CAPIF-2e security method the CCF selects;
- :mod:`m2msec.capif.certificates`, :mod:`m2msec.capif.ca`: what the CCF certifies at onboarding, and its CA;
- :mod:`m2msec.capif.tokens`, :mod:`m2msec.capif.scope`: onboarding credentials and access tokens (JWS ES256).
"""
