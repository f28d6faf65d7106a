"""CAPIF (3GPP TS 29.222 / TS 33.122): the CAPIF core function, the AEF and the invoker side."""
