"""Triton kernels and their launchers (installed as ``affseg.kernels``).

Each module holds the @triton.jit kernels of one op family, launchers that allocate outputs,
compute the grid and pass strides, a ``LIMITS`` dict of what the launchers take (read by
affseg._backend to route other calls elsewhere) and a ``work`` function counting FLOPs and bytes
as its header states. ``_launch`` holds what every launcher does alike (device guard, float64
scalars as tensors, grid-axis limits). Policy (validation, backend choice, autograd) lives in affseg.
"""
