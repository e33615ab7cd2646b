"""torch.library registrations: fake kernels and autograd for the C++ ops, and the Triton ops.

Imported by `affseg/__init__.py` so that torch.compile and opcheck see every op.
"""
