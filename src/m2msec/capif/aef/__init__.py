"""The API exposing function (AEF) side of CAPIF (issue 19): its CAPIF-3 link to the CCF (:mod:`.ccf_link`) and
the TLS-PSK key resolution of its CAPIF-2e listener (:mod:`.psk`). See docs/capif-aef.md."""
