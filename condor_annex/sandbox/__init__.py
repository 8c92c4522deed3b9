"""The local AWS used by tests and the demo: moto's server with tested fidelity fixes.

`imds` (the instance metadata emulator) lives beside it.
"""

from __future__ import annotations

from condor_annex.sandbox.local_aws import ApiCall, LocalAws, SandboxControl

__all__ = ["ApiCall", "LocalAws", "SandboxControl"]
