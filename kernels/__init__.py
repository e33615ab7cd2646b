"""Triton kernels and their launchers (installed as ``affseg.kernels``).

Each module holds the @triton.jit kernels of one op family and launchers that allocate outputs,
compute the grid and pass strides; policy (validation, backend choice, autograd) lives in affseg.
"""
