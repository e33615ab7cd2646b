"""Compile what the Triton launchers would launch, for sm_90, on a machine without a GPU.

Run as a script (TRITON_INTERPRET must be unset: jit functions built under the interpreter cannot
be compiled). Each launcher of kernels/*.py is called on *meta* tensors with its kernels swapped
for recorders, so the signature, constexprs, num_warps/num_stages and grid come from the launcher
itself, not from a copy of its logic here. Every distinct launch is compiled once with
triton.compile for GPUTarget("cuda", 90, 32) and its PTX run through Triton's bundled ptxas -v;
as Triton's launcher specialises it (integer arguments equal to 1 as constexprs, those divisible by
16 marked so) and, where some were divisible, once more without that mark (_variants). Pointers are
taken as 16-byte aligned, as torch allocations are (a view at an odd storage offset is not).
Prints one JSON object: {"launches": [...], "compiled": [...]}.

Usage: python tests/triton_sm90_probe.py [--families supcon,pdcr,...] [--jobs N]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)
GRID_LIMITS = (2**31 - 1, 65535, 65535)

_TORCH_TO_TRITON = {
    "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
    "int64": "i64", "int32": "i32", "uint8": "u8", "int8": "i8", "bool": "i1",
}


def _launches_of(family: str):
    """Call the family's launchers on meta tensors over the configurations its LIMITS allow."""
    import torch
    import triton_sm90_cases as cases  # the call sizes per family

    module = __import__(f"kernels.{family}", fromlist=["LIMITS"])
    recorded = []

    class Recorder:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                recorded.append((self.name, self.fn, tuple(grid), args, kwargs))
            return launch

    originals = {n: v for n, v in vars(module).items() if type(v).__name__ == "JITFunction" and n.endswith("_kernel")}
    for name, fn in originals.items():
        setattr(module, name, Recorder(name, fn))
    out = []
    try:
        for label, call in cases.CASES[family](module, torch):
            recorded.clear()
            error = None
            try:
                call()
            except Exception as exc:  # a launcher refusing an in-limit call is a finding, not a crash
                error = f"{type(exc).__name__}: {exc}"
            out.append((label, error, list(recorded)))
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
    return out


def _describe(fn, args, kwargs):
    """(signature, constexprs, attrs, options, python_floats) of one recorded launch, specialised as
    Triton's launcher specialises it: an integer argument equal to 1 becomes a constexpr (its
    native_specialize_impl), one divisible by 16 gets the divisibility attribute."""
    import torch

    names = fn.arg_names
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    signature, constexprs, attrs, floats = {}, {}, {}, []
    for i, name in enumerate(names):
        p = fn.params[i]
        if name not in values:
            if p.has_default:
                values[name] = p.default
            else:
                raise TypeError(f"{fn.__name__}: argument {name} not passed")
        v = values[name]
        if p.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = v
        elif isinstance(v, torch.Tensor):
            signature[name] = "*" + _TORCH_TO_TRITON[str(v.dtype).replace("torch.", "")]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int):
            if v == 1 and not p.do_not_specialize:
                signature[name] = "constexpr"
                constexprs[name] = 1
                continue
            signature[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0 and not p.do_not_specialize and not p.do_not_specialize_on_alignment:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            signature[name] = "fp32"  # what the GPU launcher makes of a Python float
            floats.append(name)
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={v!r}")
    return signature, constexprs, attrs, options, floats


def _key(name, signature, constexprs, attrs, options):
    """Triton specialises integer arguments equal to 1 (constexprs) and divisible by 16 (attrs), and
    ptxas allots registers differently to the variants: they are distinct compiles."""
    const = {k: (str(v) if not isinstance(v, (int, float, bool, str)) else v) for k, v in constexprs.items()}
    divisible = sorted(i[0] for i in attrs)
    return json.dumps([name, signature, const, divisible, options], sort_keys=True, default=str)


def _variants(signature, attrs):
    """The attrs of the launch as recorded and, where some integer argument was divisible by 16, of the
    same launch with none of them so: what other sizes, not multiples of 16, give (the cases need not
    list an odd size for every argument). Arguments equal to 1 stay constexprs in both: they are 1 by
    the launch's shape (one tile, one channel chunk, the depth of a 2-D image), and the cases that
    make them larger compile that apart."""
    ints = {(i,) for i, t in enumerate(signature.values()) if t in ("i32", "i64")}
    general = {k: v for k, v in attrs.items() if k not in ints}
    return [attrs] if general == attrs else [attrs, general]


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


_VECTOR_PTRS = re.compile(r"tensor<(\d+)x!tt\.ptr<")


def _loop_vector_loads(ttgir: str) -> list:
    """Lengths of the 1-D loads (tt.load, or the pipeliner's async copies) inside any scf.for body: a
    loop-invariant vector the compiler hoisted (held in registers) does not appear."""
    stack, lengths = [], set()
    for line in ttgir.splitlines():
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if stack and text.startswith("}") and indent == stack[-1]:
            stack.pop()
        elif "scf.for" in text and text.endswith("{"):
            stack.append(indent)
        elif stack and ("tt.load" in text or "async_copy_global_to_local" in text):
            lengths.update(int(n) for n in _VECTOR_PTRS.findall(text.rsplit(" : ", 1)[-1]))
    return sorted(lengths)


def _compile(job):
    """Compile one launch for sm_90 and run ptxas -v on its PTX; returns a result dict."""
    family, name, signature, constexprs, attrs, options = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = __import__(f"kernels.{family}", fromlist=[name])
    fn = getattr(module, name)
    res = {"family": family, "kernel": name, "signature": signature,
           "constexprs": {k: str(v) for k, v in constexprs.items()}, "options": options,
           "divisible_by_16": [list(signature)[i[0]] for i in attrs if signature[list(signature)[i[0]]][0] != "*"],
           "ones": [n for n, p in zip(fn.arg_names, fn.params) if not p.is_constexpr and n in constexprs]}
    start = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(options))
        res["shared"] = int(compiled.metadata.shared)
        ptx = compiled.asm["ptx"]
        res["mma"] = ("mma." in ptx) or ("wgmma" in ptx)
        res["wgmma"] = "wgmma.mma_async" in ptx  # Hopper's warpgroup MMA (tiles of 64+ rows per warpgroup)
        res["loop_vector_loads"] = _loop_vector_loads(compiled.asm["ttgir"])
        ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
            fh.write(ptx)
        try:
            proc = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", fh.name, "-o", os.devnull],
                                  capture_output=True, text=True, timeout=300)
        finally:
            os.unlink(fh.name)
        if proc.returncode != 0:
            raise RuntimeError("ptxas failed: " + proc.stderr[-2000:])
        for k, rx in _PTXAS_RE.items():
            m = rx.search(proc.stderr)
            res[k] = int(m.group(1)) if m else None
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        res["traceback"] = traceback.format_exc()[-3000:]
    res["seconds"] = round(time.perf_counter() - start, 2)
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="supcon,pdcr,entropy,uafs,labels")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

    launches, jobs = [], {}
    for family in args.families.split(","):
        for label, error, recorded in _launches_of(family):
            entry = {"family": family, "case": label, "error": error, "kernels": []}
            for name, fn, grid, a, kw in recorded:
                signature, constexprs, attrs, options, floats = _describe(fn, a, kw)
                keys = []
                for variant in _variants(signature, attrs):
                    key = _key(name, signature, constexprs, variant, options)
                    jobs.setdefault(key, (family, name, signature, constexprs, variant, options))
                    keys.append(key)
                entry["kernels"].append({"kernel": name, "grid": list(grid), "python_floats": floats, "keys": keys})
            launches.append(entry)

    keys = list(jobs)
    # fork workers after the modules are imported: each compile is independent and CPU-bound
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = []
        for res in pool.map(_compile, [jobs[k] for k in keys]):
            results.append(res)
            sizes = {k: v for k, v in res["constexprs"].items() if k.startswith(("BLOCK", "K_POW2", "M_POW2", "W", "K"))}
            print(f"[{len(results)}/{len(keys)}] {res['family']} {res['kernel']} {sizes} {res['seconds']} s "
                  f"shared={res.get('shared')} regs={res.get('registers')} spills={res.get('spill_stores')}"
                  f"{' ERROR' if 'error' in res else ''}", file=sys.stderr, flush=True)
    compiled = []
    for key, res in zip(keys, results):
        res["key"] = key
        compiled.append(res)
    json.dump({"smem_limit": SMEM_LIMIT, "grid_limits": GRID_LIMITS, "launches": launches,
               "compiled": compiled}, sys.stdout)


if __name__ == "__main__":
    main()
