"""Semi-AGCL side by side (issue 8 targets): the reference against the fused C++ CPU kernels.

    .venv/bin/python -m pytest benchmarks/bench_agcl.py --benchmark-enable   # small sizes, pytest-benchmark
    .venv/bin/python benchmarks/bench_agcl.py      # the issue's sizes -> benchmarks/results/agcl.{csv,md}

Cases:
- affinity graph, N=2048, D=4: building A and the backward contraction (the part the kernels fuse),
  timed without the SVD; the SVD (torch.linalg.svdvals forward + backward on A) separately; and the
  whole loss.
- mixed_negative_infonce, B=256, Q=65,536, C=128, n_hard = n_mix = 1024, forward + backward.
- sample_patches + patch_embed on (8, 4, 256, 256) logits with 64-channel features, against one
  training step (forward, backward, SGD step) of MONAI's 2D BasicUNet on (8, 1, 256, 256) images.

Time: median of `repeats` calls after a warm-up. Peak extra memory: affseg.bench.peak_extra_mib (the
rise of the resident-set high-water mark during one call).
"""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

import affseg
from affseg import bench, reference

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")


def _graph_inputs(n, d=4):
    g = torch.Generator().manual_seed(0)
    y_t = torch.randn(n, d, generator=g).softmax(-1)
    y_s = torch.randn(n, d, generator=g).softmax(-1).requires_grad_()
    grad_a = torch.randn(n, n, generator=g) / n
    return y_t, y_s, grad_a


def _affinity_step(backend, y_t, y_s, grad_a):
    from affseg._ops import agcl as ops

    def run():
        if backend == "reference":
            a = reference.affinity_matrix(y_t, y_s, 2.0)
        else:
            a = ops.affinity_matrix(y_t, y_s, inv_two_sigma2=2.0, l1=False, backend=backend)
        (grad,) = torch.autograd.grad(a, y_s, grad_a)
        return grad
    return run


def _graph_loss_step(backend, y_t, y_s):
    def run():
        (grad,) = torch.autograd.grad(affseg.affinity_graph_loss(y_t, y_s, backend=backend), y_s)
        return grad
    return run


def _svd_step(y_t, y_s):
    a = reference.affinity_matrix(y_t, y_s.detach(), 2.0).requires_grad_()

    def run():
        (grad,) = torch.autograd.grad(torch.linalg.svdvals(a).sum(), a)
        return grad
    return run


def _infonce_inputs(b, q, c):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, c, generator=g).requires_grad_(), torch.randn(b, c, generator=g),
            torch.randn(q, c, generator=g), torch.rand(q, generator=g))


def _infonce_step(backend, inputs, n_hard, n_mix):
    q, k, neg, alpha = inputs

    def run():
        loss = affseg.mixed_negative_infonce(q, k, neg, alpha, n_hard=n_hard, n_mix=n_mix, backend=backend,
                                             generator=torch.Generator().manual_seed(2))
        (grad,) = torch.autograd.grad(loss, q)
        return loss
    return run


def _sampler_step(backend, logits, labels, feats):
    def run():
        sample = affseg.sample_patches(logits, labels, 32, n_per_class=64, backend=backend,
                                       generator=torch.Generator().manual_seed(3))
        return affseg.patch_embed(feats, sample, labels, 32)
    return run


def _unet_step(images, labels):
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def run():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        opt.step()
        return loss
    return run


def _measure(name, size, step, repeats, measure_memory=True):
    step()  # warm-up outside the measurements
    mib = bench.peak_extra_mib(step, CPU) if measure_memory else float("nan")
    ms = bench.median_ms(step, CPU, repeats=repeats, warmup=0)
    row = {"case": name, "size": size, "ms": round(ms, 1), "peak_extra_mib": round(mib, 1)}
    print(row, flush=True)
    return row


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_affinity_fwd_bwd_512(benchmark, backend):
    benchmark(_affinity_step(backend, *_graph_inputs(512)))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mixed_infonce_small(benchmark, backend):
    benchmark(_infonce_step(backend, _infonce_inputs(32, 4096, 64), 128, 128))


def _ratio_rows(rows, pairs):
    lines = ["| case | size | ms | × reference time | peak extra MiB | × reference memory |", "|---|---|---:|---:|---:|---:|"]
    for fused, ref in pairs:
        for r, base in ((rows[ref], None), (rows[fused], rows[ref])):
            t = "" if base is None else f"{r['ms'] / base['ms']:.3f}"
            m = "" if base is None or base["peak_extra_mib"] != base["peak_extra_mib"] else (
                f"{r['peak_extra_mib'] / max(base['peak_extra_mib'], 1e-9):.3f}")
            lines.append(f"| {r['case']} | {r['size']} | {r['ms']:.1f} | {t} | {r['peak_extra_mib']:.1f} | {m} |")
    return lines


def main(repeats: int = 3) -> int:
    rows = {}
    y_t, y_s, grad_a = _graph_inputs(2048)
    for backend in ("reference", "cpu"):
        rows[f"affinity A + backward ({backend})"] = _measure(
            f"affinity A + backward ({backend})", "N=2048, D=4", _affinity_step(backend, y_t, y_s, grad_a), repeats)
    rows["svdvals fwd+bwd (torch, both)"] = _measure("svdvals fwd+bwd (torch, both)", "2048×2048",
                                                     _svd_step(y_t, y_s), repeats)
    for backend in ("reference", "cpu"):
        rows[f"affinity_graph_loss ({backend})"] = _measure(
            f"affinity_graph_loss ({backend})", "N=2048, D=4", _graph_loss_step(backend, y_t, y_s), repeats)
    inputs = _infonce_inputs(256, 65536, 128)
    for backend in ("reference", "cpu"):
        rows[f"mixed_negative_infonce ({backend})"] = _measure(
            f"mixed_negative_infonce ({backend})", "B=256, Q=65536, C=128, n_hard=n_mix=1024",
            _infonce_step(backend, inputs, 1024, 1024), repeats)
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(8, 4, 256, 256, generator=g)
    labels = logits.argmax(1)
    feats = torch.randn(8, 64, 256, 256, generator=g)
    rows["sample_patches + patch_embed (cpu)"] = _measure(
        "sample_patches + patch_embed (cpu)", "(8, 4, 256, 256), C=64", _sampler_step("cpu", logits, labels, feats),
        repeats)
    rows["BasicUNet 2D training step"] = _measure(
        "BasicUNet 2D training step", "(8, 1, 256, 256)", _unet_step(torch.randn(8, 1, 256, 256), labels), repeats,
        measure_memory=False)
    bench.write_csv(RESULTS / "agcl.csv", list(rows.values()))
    import datetime
    import subprocess

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=RESULTS.parent).stdout.strip() or "unknown"
    lines = [
        f"## Semi-AGCL (CPU, {torch.get_num_threads()} threads)",
        "",
        f"Measured {datetime.date.today().isoformat()} at commit {sha}, in a run of this script alone.",
        "",
        "Median of a few calls after a warm-up; peak extra memory = rise of the resident-set high-water mark during "
        "one call. Targets: the fused A build + backward <= 1/3 of the reference's time and <= 1/10 of its memory "
        "(the SVD, the same torch call for both, reported on its own row); mixed_negative_infonce <= 1/2 the time "
        "and <= 1/20 the memory; sample_patches + patch_embed <= 1/10 of one 2D U-Net training step.",
        "",
    ]
    lines += _ratio_rows(rows, [
        ("affinity A + backward (cpu)", "affinity A + backward (reference)"),
        ("affinity_graph_loss (cpu)", "affinity_graph_loss (reference)"),
        ("mixed_negative_infonce (cpu)", "mixed_negative_infonce (reference)"),
        ("sample_patches + patch_embed (cpu)", "BasicUNet 2D training step"),
    ])
    svd = rows["svdvals fwd+bwd (torch, both)"]
    lines += ["", f"SVD alone (torch.linalg.svdvals forward + backward, 2048×2048): {svd['ms']:.1f} ms, "
                  f"{svd['peak_extra_mib']:.1f} MiB."]
    (RESULTS / "agcl.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
