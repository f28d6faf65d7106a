"""The CAPIF core function (CCF, 3GPP TS 29.222 / TS 33.122): an ASGI application served over m2msec's TLS.

- :mod:`.context`: the CCF's state (key store, CA, token key, policy, clock, identifiers) and who is calling.
- :mod:`.http`: the operations of the official OpenAPI files as routes: every request body validated against the
  official schema before a handler sees it, every refusal a TS 29.122 ``ProblemDetails``.
- one module per API: :mod:`.invokers` (API Invoker Management), :mod:`.providers` (API Provider Management),
  :mod:`.publish` (Publish Service), :mod:`.discover` (Discover Service), :mod:`.security` (CAPIF Security),
  :mod:`.events` (CAPIF Events).
- :mod:`.config`, :mod:`.server`: ``m2msec ccf serve``.
"""
