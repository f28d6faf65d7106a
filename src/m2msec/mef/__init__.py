"""The M2M Enrolment Function (TS-0003 §8.3 remote security provisioning; docs/mef.md)."""
