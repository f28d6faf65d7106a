"""API Provider Management (TS 29.222 §8.9, `/api-provider-management/v1`): register, update, deregister API
provider domains and their functions (AEF/APF/AMF), each function's CSR signed.
"""

from __future__ import annotations
