"""affseg.nn.ClassQueue: per-class FIFO against a list-of-lists oracle, state_dict, and a real
2-process gloo run (SPEC §7)."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import affseg


class ListQueue:
    """Oracle: one Python list per class, oldest first, newest `size` kept."""

    def __init__(self, num_classes, size):
        self.size = size
        self.items = [[] for _ in range(num_classes)]

    def push(self, keys, cls, alpha):
        for key, c, a in zip(keys, cls.tolist(), alpha):
            self.items[c].append((key.clone(), float(a)))
            del self.items[c][:-self.size]

    def contents(self, dim):
        keys = [k for per in self.items for k, _ in per]
        cls = [c for c, per in enumerate(self.items) for _ in per]
        alpha = [a for per in self.items for _, a in per]
        return (torch.stack(keys) if keys else torch.zeros(0, dim), torch.tensor(cls, dtype=torch.long),
                torch.tensor(alpha, dtype=torch.float32))


def assert_same(queue, oracle, dim):
    keys, cls, alpha = oracle.contents(dim)
    assert queue.keys().shape == keys.shape
    assert torch.equal(queue.keys(), keys)
    assert torch.equal(queue.classes(), cls)
    torch.testing.assert_close(queue.alpha(), alpha, atol=0, rtol=0)
    assert len(queue) == cls.numel()


def test_fifo_and_wraparound_over_many_pushes():
    dim, K, size = 3, 3, 4
    queue = affseg.nn.ClassQueue(dim, K, size)
    oracle = ListQueue(K, size)
    g = torch.Generator().manual_seed(0)
    assert queue.keys().shape == (0, dim) and queue.classes().numel() == 0 and queue.alpha().numel() == 0
    for step, n in enumerate([1, 3, 0, 5, 2, 7, 1, 4]):
        keys = torch.randn(n, dim, generator=g)
        cls = torch.randint(0, K, (n,), generator=g)
        alpha = torch.rand(n, generator=g)
        queue.push(keys, cls, alpha)
        oracle.push(keys, cls, alpha)
        assert_same(queue, oracle, dim)


def test_push_order_is_arrival_order_within_class():
    queue = affseg.nn.ClassQueue(1, 2, 8)
    keys = torch.arange(6, dtype=torch.float32)[:, None]
    queue.push(keys, torch.tensor([1, 0, 1, 1, 0, 1]), torch.arange(6) / 10)
    assert queue.classes().tolist() == [0, 0, 1, 1, 1, 1]
    assert queue.keys()[:, 0].tolist() == [1, 4, 0, 2, 3, 5]
    torch.testing.assert_close(queue.alpha(), torch.tensor([0.1, 0.4, 0.0, 0.2, 0.3, 0.5]))


def test_push_more_than_capacity_keeps_newest():
    queue = affseg.nn.ClassQueue(2, 2, 3)
    queue.push(torch.tensor([[9.0, 9.0]]), torch.tensor([0]), torch.tensor([0.9]))
    keys = torch.arange(14, dtype=torch.float32).view(7, 2)
    queue.push(keys, torch.zeros(7, dtype=torch.long), torch.arange(7) / 10)
    assert queue.classes().tolist() == [0, 0, 0]
    assert torch.equal(queue.keys(), keys[4:])
    torch.testing.assert_close(queue.alpha(), torch.tensor([0.4, 0.5, 0.6]))
    # Then a partial push wraps around the ring and still reads oldest first.
    queue.push(torch.tensor([[100.0, 101.0]]), torch.tensor([0]), torch.tensor([0.7]))
    assert torch.equal(queue.keys(), torch.cat([keys[5:], torch.tensor([[100.0, 101.0]])]))


def test_keys_are_detached_copies():
    queue = affseg.nn.ClassQueue(2, 2, 4)
    keys = torch.randn(3, 2, requires_grad=True)
    queue.push(keys, torch.tensor([0, 1, 1]), torch.rand(3))
    assert not queue.keys().requires_grad
    with torch.no_grad():
        keys.add_(1.0)
    assert not torch.equal(queue.keys()[0], keys[0].detach())


def test_state_dict_round_trip():
    dim, K, size = 4, 3, 5
    queue = affseg.nn.ClassQueue(dim, K, size)
    g = torch.Generator().manual_seed(1)
    for n in (4, 9, 3):
        queue.push(torch.randn(n, dim, generator=g), torch.randint(0, K, (n,), generator=g), torch.rand(n, generator=g))
    fresh = affseg.nn.ClassQueue(dim, K, size)
    fresh.load_state_dict(queue.state_dict())
    for name in ("keys", "classes", "alpha"):
        assert torch.equal(getattr(fresh, name)(), getattr(queue, name)()), name
    # The write position survives too: the same next push gives the same contents.
    more = (torch.randn(6, dim, generator=g), torch.randint(0, K, (6,), generator=g), torch.rand(6, generator=g))
    queue.push(*more)
    fresh.push(*more)
    for name in ("keys", "classes", "alpha"):
        assert torch.equal(getattr(fresh, name)(), getattr(queue, name)()), name


def test_bad_inputs():
    queue = affseg.nn.ClassQueue(2, 3, 4)
    with pytest.raises(ValueError, match="cls"):
        queue.push(torch.randn(2, 2), torch.tensor([0, 3]), torch.rand(2))
    with pytest.raises(ValueError, match="cls"):
        queue.push(torch.randn(2, 2), torch.tensor([-1, 0]), torch.rand(2))
    with pytest.raises(ValueError, match="keys"):
        queue.push(torch.randn(2, 5), torch.tensor([0, 1]), torch.rand(2))
    with pytest.raises(TypeError, match="cls"):
        queue.push(torch.randn(2, 2), torch.tensor([0.0, 1.0]), torch.rand(2))
    with pytest.raises((ValueError, TypeError), match="alpha"):
        queue.push(torch.randn(2, 2), torch.tensor([0, 1]), torch.rand(3))
    with pytest.raises(ValueError):
        affseg.nn.ClassQueue(2, 3, 0)
    assert len(queue) == 0  # nothing half-written by the refused pushes


# ----------------------------------------------------------------------------- 2-process gloo

WORKER = textwrap.dedent("""
    import sys, types, torch, torch.distributed as dist

    rank, init, out, package_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    # Load affseg/nn/queue.py (and what it imports) without running affseg/__init__.py, whose
    # torch._dynamo import would double this test's start-up time on a loaded machine.
    for name, path in (("affseg", package_dir), ("affseg.nn", package_dir + "/nn")):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    from affseg.nn.queue import ClassQueue

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        queue = ClassQueue(3, 2, 4)
        pushes = []
        for step, counts in enumerate([(2, 3), (0, 2), (4, 1)]):
            n = counts[rank]
            g = torch.Generator().manual_seed(100 * step + rank)
            keys = torch.randn(n, 3, generator=g) + 10 * rank  # rank 1 keys are recognisably shifted
            cls = torch.randint(0, 2, (n,), generator=g)
            alpha = torch.rand(n, generator=g)
            queue.push(keys, cls, alpha)
            pushes.append((keys, cls, alpha))
        torch.save({"keys": queue.keys(), "classes": queue.classes(), "alpha": queue.alpha(),
                    "pushes": pushes}, out)
    finally:
        dist.destroy_process_group()
""")


def test_distributed_two_ranks_gather_in_rank_order(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = (tmp_path / "rendezvous").as_uri()  # a FileStore: no port to race for
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    package_dir = os.path.dirname(os.path.abspath(affseg.__file__))
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    procs = []
    for r in range(2):
        with open(logs[r], "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(script), str(r), init, str(outs[r]), package_dir],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    # Wait for both; as soon as one fails, stop the other (it would hang in the collective).
    deadline = time.monotonic() + 120
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    if any(p.returncode != 0 for p in procs):
        report = "\n".join(f"--- rank {r} (rc {p.returncode}; -9 = stopped here):\n{logs[r].read_text()[-3000:]}"
                           for r, p in enumerate(procs))
        pytest.fail(f"a distributed worker failed or timed out:\n{report}")
    res = [torch.load(o) for o in outs]
    for name in ("keys", "classes", "alpha"):
        assert torch.equal(res[0][name], res[1][name]), f"ranks disagree on {name}"
    # Oracle: every push is rank 0's keys then rank 1's, into one local queue.
    oracle = ListQueue(2, 4)
    for step in range(3):
        k0, c0, a0 = res[0]["pushes"][step]
        k1, c1, a1 = res[1]["pushes"][step]
        oracle.push(torch.cat([k0, k1]), torch.cat([c0, c1]), torch.cat([a0, a1]))
    keys, cls, alpha = oracle.contents(3)
    assert torch.equal(res[0]["keys"], keys)
    assert torch.equal(res[0]["classes"], cls)
    torch.testing.assert_close(res[0]["alpha"], alpha, atol=0, rtol=0)
    assert (res[0]["keys"].mean(1) > 5).any() and (res[0]["keys"].mean(1) < 5).any()  # both ranks' keys
