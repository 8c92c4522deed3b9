"""The local AWS used by tests and the demo: moto's server with tested fidelity fixes.

`imds` (the instance metadata emulator) lives beside it.
"""

from __future__ import annotations

from annex_sandbox.local_aws import ApiCall, LocalAws, SandboxControl

__all__ = ["ApiCall", "LocalAws", "SandboxControl"]
