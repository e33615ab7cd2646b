"""torch.library registrations: fake kernels and autograd for the C++ ops, and the Triton ops.

Imported by `affseg/__init__.py` so that torch.compile and opcheck see every op.
"""
from affseg._ops import labels  # noqa: F401
from affseg._ops import pdcr  # noqa: F401
from affseg._ops import entropy  # noqa: F401
from affseg._ops import uafs  # noqa: F401
from affseg._ops import supcon  # noqa: F401
from affseg._ops import agcl  # noqa: F401
