"""affseg.models (SPEC §10): FeatureTaps, add_uafs, the reference UNet and MeanTeacher.

Small networks and inputs throughout (2 CPU cores); one torch.compile test with inductor, one
with aot_eager. The docstring examples run in tests/test_docs.py with the rest of the API.
"""
import gc
import warnings
import weakref

import pytest
import torch

import affseg
from affseg.models import FeatureTaps, MeanTeacher, UAFSAfter, UNet, add_uafs

monai_nets = pytest.importorskip("monai.networks.nets")

TINY = (4, 8, 8, 8, 8)


def _hooked(module):
    """A manual forward hook: the reference that FeatureTaps must match."""
    seen = {}
    handle = module.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))
    return seen, handle


def _grads(params):
    return [p for p in params if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]


# -- FeatureTaps ---------------------------------------------------------------------------------
def test_taps_unet_2d_pdcr_backward():
    net = UNet(1, 3, channels=TINY)
    taps = FeatureTaps(net, net.feature_layers)
    seen, handle = _hooked(net.decoder.up4)
    x, labels = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    logits = net(x)
    assert logits.shape == (2, 3, 32, 32)
    assert list(taps.keys()) == ["decoder.up1", "decoder.up2", "decoder.up3", "decoder.up4"]
    for name, c, side in zip(net.feature_layers, net.feature_channels, (4, 8, 16, 32)):
        assert taps[name].shape == (2, c, side, side)
    assert taps["decoder.up4"] is seen["out"]
    handle.remove()
    loss = affseg.pdcr_loss(taps[net.feature_layers[-1]], labels, num_classes=3)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.encoder.in_conv[0].weight.grad is not None and net.decoder.up4.conv[0].weight.grad.abs().sum() > 0
    assert net.decoder.out_conv.weight.grad is None  # the loss is on the hidden map, not the logits
    assert set(taps.outputs) == set(net.feature_layers) and len(taps.values()) == 4


def test_taps_unet_3d():
    net = UNet(1, 2, dims=3, channels=(2, 4, 4, 4, 4))
    with FeatureTaps(net, ["decoder.up2", "decoder.up4"]) as taps:
        net(torch.randn(2, 1, 16, 16, 16))  # batch 2: training BatchNorm on the 1x1x1 bottom
        assert taps["decoder.up4"].shape == (2, 2, 16, 16, 16)
        feats = taps["decoder.up2"]
        assert feats.shape == (2, 4, 4, 4, 4)
        affseg.pdcr_loss(feats, torch.randint(0, 2, (2, 16, 16, 16)), num_classes=2).backward()
        assert net.encoder.down1.conv[0].weight.grad is not None
    assert not taps.active and not net.decoder.up2._forward_hooks


def test_taps_monai_basic_unet():
    net = monai_nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8))
    taps = FeatureTaps(net, ["upcat_1", "upcat_3"])
    seen, handle = _hooked(net.upcat_1)
    net(torch.randn(2, 1, 32, 32))
    handle.remove()
    assert torch.equal(taps["upcat_1"], seen["out"]) and taps["upcat_1"].shape == (2, 8, 32, 32)
    assert taps["upcat_3"].shape == (2, 16, 8, 8)
    loss = affseg.pdcr_loss(taps["upcat_1"], torch.randint(0, 3, (2, 32, 32)), num_classes=3)
    loss.backward()
    assert len(_grads(net.parameters())) > 0 and net.conv_0.conv_0.conv.weight.grad is not None


def test_taps_monai_unet():
    net = monai_nets.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    taps = FeatureTaps(net, ["model.1", "model.0"])
    seen, handle = _hooked(net.model[1])
    net(torch.randn(2, 1, 32, 32))
    handle.remove()
    assert taps["model.1"] is seen["out"]
    assert taps["model.0"].shape == (2, 8, 16, 16)
    # a half-resolution map against full-resolution labels (s <= S)
    affseg.pdcr_loss(taps["model.1"], torch.randint(0, 2, (2, 32, 32)), num_classes=2).backward()
    assert net.model[0].conv.weight.grad is not None


def test_taps_errors_and_lifetime():
    net = UNet(1, 2, channels=(2, 4, 4))
    with pytest.raises(ValueError, match=r"'decoder\.up9'.*close names.*decoder\.up"):
        FeatureTaps(net, ["decoder.up1", "decoder.up9"])
    assert not net.decoder.up1._forward_hooks  # nothing attached when a name is bad
    with pytest.raises(ValueError, match="empty"):
        FeatureTaps(net, [])
    with pytest.raises(TypeError):
        FeatureTaps(net, [3])
    taps = FeatureTaps(net, "decoder.up2")  # a single name
    with pytest.raises(RuntimeError, match="run the model forward first"):
        taps["decoder.up2"]
    assert taps.get("decoder.up2") is None
    with pytest.raises(KeyError, match=r"'decoder\.up1' is not a tapped layer.*decoder\.up2"):
        taps["decoder.up1"]
    assert "decoder.up2" in taps and "decoder.up1" not in taps and len(taps) == 1
    net(torch.randn(1, 1, 16, 16))
    first = taps["decoder.up2"]
    net(torch.randn(1, 1, 16, 16))
    assert taps["decoder.up2"] is not first  # every forward overwrites
    ref = weakref.ref(taps["decoder.up2"])
    taps.clear()  # drops the references
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError):
        taps["decoder.up2"]
    taps.remove()
    net(torch.randn(1, 1, 16, 16))
    with pytest.raises(RuntimeError, match="hooks were removed"):
        taps["decoder.up2"]
    assert not net.decoder.up2._forward_hooks
    # a taps object that is garbage-collected takes its hooks with it
    FeatureTaps(net, ["decoder.up1"])
    gc.collect()
    assert not net.decoder.up1._forward_hooks


def test_taps_record_structured_outputs_and_wrapper_prefixes():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x + 1, {"double": 2 * x}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.lin = Pair(), torch.nn.Linear(3, 3)

        def forward(self, x):
            a, d = self.pair(x)
            return self.lin(a + d["double"])

    net = torch.nn.DataParallel(Net())  # names gain "module."; CPU-only DataParallel just calls the net
    taps = FeatureTaps(net, ["pair", "module.lin", ""])
    x = torch.randn(2, 3)
    out = net(x)
    a, d = taps["pair"]
    assert torch.equal(a, x + 1) and torch.equal(d["double"], 2 * x)
    assert torch.equal(taps["module.lin"], out) and torch.equal(taps[""], out)
    assert taps.modules["pair"] is net.module.pair


def test_taps_under_torch_compile_inductor():
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1)).eval()
    taps = FeatureTaps(net, ["1", "2"])  # attach, then compile
    x = torch.randn(2, 1, 12, 12)
    eager_out = net(x)
    eager = {k: v.clone() for k, v in taps.items()}
    taps.clear()
    compiled = torch.compile(net, fullgraph=False)
    out = compiled(x)
    torch.testing.assert_close(out, eager_out)
    assert set(taps.outputs) == {"1", "2"}
    for name in ("1", "2"):
        torch.testing.assert_close(taps[name], eager[name])


def test_taps_under_torch_compile_backward_and_remove():
    torch._dynamo.reset()
    net = UNet(1, 2, channels=(2, 4, 4)).eval()
    x, labels = torch.randn(1, 1, 16, 16), torch.randint(0, 2, (1, 16, 16))
    taps = FeatureTaps(net, net.feature_layers[-1:])
    net(x)
    eager = taps["decoder.up2"].detach().clone()
    compiled = torch.compile(net, fullgraph=False, backend="aot_eager")
    compiled(x)
    torch.testing.assert_close(taps["decoder.up2"], eager)
    affseg.pdcr_loss(taps["decoder.up2"], labels, num_classes=2).backward()
    assert net.encoder.in_conv[0].weight.grad is not None
    taps.remove()
    compiled(x)  # removing the hooks recompiles: nothing is recorded any more
    assert not taps.outputs


# -- add_uafs ------------------------------------------------------------------------------------
def _seq():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 1))


def test_add_uafs_sequential_inference_and_state_dict():
    x = torch.randn(2, 1, 16, 16)
    net = _seq()
    plain_state = {k: v.clone() for k, v in net.state_dict().items()}
    assert add_uafs(net, ["0", "1"], example_input=x) is net
    assert isinstance(net[0], UAFSAfter) and isinstance(net[1], UAFSAfter)
    assert (net[0].uafs.channels, net[0].uafs.dims) == (6, 2)  # from Conv2d.out_channels
    assert (net[1].uafs.channels, net[1].uafs.dims) == (6, 2)  # ReLU says nothing: from its output
    assert net[1].uafs.training and net.training  # the dry run in eval mode left the modes as they were
    assert net(x).shape == (2, 2, 16, 16)
    keys = set(net.state_dict())
    assert "0.module.weight" in keys and "0.uafs.attention.0.weight" in keys and "1.uafs.attention.3.bias" in keys
    net.eval()
    ref = net(x)
    # round trip into a fresh, still lazy copy: the state_dict builds the lazy block
    other = add_uafs(_seq(), ["0", "1"]).eval()
    assert not other[1].materialized
    other.load_state_dict(net.state_dict())
    assert other[1].materialized
    torch.testing.assert_close(other(x), ref)
    # a checkpoint of the network before add_uafs still loads into .module (strict=False)
    result = add_uafs(_seq(), "0").load_state_dict(plain_state, strict=False)
    assert not result.unexpected_keys and all(".uafs." in k for k in result.missing_keys)


def test_add_uafs_monai_basic_unet_backward():
    net = monai_nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8))
    x = torch.randn(2, 1, 32, 32)
    before = net(x).shape
    add_uafs(net, ["upcat_1", "upcat_3", "down_1.convs.conv_0"], example_input=x)
    assert (net.upcat_1.uafs.channels, net.upcat_3.uafs.channels) == (8, 16)  # lazy: from the outputs
    inner = net.down_1.convs.conv_0  # MONAI Convolution: out_channels and spatial_dims attributes
    assert isinstance(inner, UAFSAfter) and (inner.uafs.channels, inner.uafs.dims) == (8, 2)
    out = net(x)
    assert out.shape == before
    out.square().mean().backward()
    assert net.upcat_1.uafs.attention[0].weight.grad is not None
    # the 2D/3D decision follows the module: a 3D MONAI network gets 3D blocks
    net3 = monai_nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
    add_uafs(net3, ["model.0"])
    assert net3.model[0].uafs.dims == 3 and net3.model[0].uafs.channels == 4
    assert net3(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_add_uafs_lazy_warns_and_errors():
    net = add_uafs(_seq(), "1")
    with pytest.warns(UserWarning, match="example_input"):
        net(torch.randn(1, 1, 8, 8))  # a training forward that builds the block
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            add_uafs(_seq(), "1")(torch.randn(1, 1, 8, 8))  # a no-grad dry run is silent
    with pytest.raises(ValueError, match="'conv9' is not a submodule"):
        add_uafs(_seq(), ["conv9"])
    with pytest.raises(ValueError, match="close names"):
        add_uafs(monai_nets.BasicUNet(spatial_dims=2, features=(8, 8, 16, 32, 64, 8)), "upcat1")
    with pytest.raises(ValueError, match="model itself"):
        add_uafs(_seq(), "")
    with pytest.raises(ValueError, match="already followed"):
        add_uafs(add_uafs(_seq(), "0"), "0")
    with pytest.raises(ValueError, match="m must be"):
        add_uafs(_seq(), "1", m=1)
    with pytest.raises(ValueError, match="built for 3 channels"):  # a wrong explicit channels= is caught
        add_uafs(_seq(), "0", channels=3, dims=2)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="not in after"):
        add_uafs(_seq(), "0", channels={"1": 6})

    class Tuple(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(TypeError, match="returns tuple"):
        add_uafs(torch.nn.Sequential(Tuple()), "0")(torch.randn(1, 2, 4, 4))


def test_add_uafs_then_taps():
    net = add_uafs(_seq(), "0", example_input=torch.randn(1, 1, 8, 8))
    taps = FeatureTaps(net, ["0", "0.module"])
    net(torch.randn(2, 1, 8, 8))
    torch.testing.assert_close(taps["0"], net[0].uafs(taps["0.module"]))


# -- UNet ----------------------------------------------------------------------------------------
def test_unet_shapes_2d_3d_and_odd_sizes():
    net = UNet(1, 4, channels=TINY)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 4, 32, 32)
    assert net(torch.randn(1, 1, 33, 47)).shape == (1, 4, 33, 47)  # not multiples of 16
    net_t = UNet(2, 3, channels=TINY, upsample="transpose")
    assert net_t(torch.randn(1, 2, 35, 17)).shape == (1, 3, 35, 17)
    net3 = UNet(1, 2, dims=3, channels=(2, 4, 4, 4, 4))
    assert isinstance(net3.encoder.in_conv[0], torch.nn.Conv3d)
    assert isinstance(net3.encoder.down1.pool, torch.nn.MaxPool3d)
    assert net3(torch.randn(2, 1, 16, 20, 18)).shape == (2, 2, 16, 20, 18)
    default = UNet(1, 4)  # the SSL4MIS 2D U-Net shape
    assert default.channels == (16, 32, 64, 128, 256) and default.feature_channels == (128, 64, 32, 16)
    assert [m.p for m in default.modules() if isinstance(m, torch.nn.Dropout)][:5] == [0.05, 0.1, 0.2, 0.3, 0.5]
    with pytest.raises(ValueError, match=">= 16"):
        net(torch.randn(1, 1, 8, 32))
    with pytest.raises(ValueError, match="expects x of shape"):
        net(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="dims"):
        UNet(1, 2, dims=1)
    with pytest.raises(ValueError, match="dropout"):
        UNet(1, 2, channels=(4, 8), dropout=(0.1,))


def test_unet_uafs_after_every_decoder_stage():
    net = UNet(1, 3, channels=TINY, uafs=True)
    blocks = [getattr(net.decoder, f"up{i}").uafs for i in range(1, 5)]
    assert all(isinstance(b, affseg.nn.UAFS) for b in blocks)
    assert [b.channels for b in blocks] == list(net.feature_channels)
    assert sum(isinstance(m, affseg.nn.UAFS) for m in net.modules()) == 4
    assert UNet(1, 3, channels=TINY).decoder.up1.uafs is None
    taps = FeatureTaps(net, [*net.feature_layers, "decoder.up4.uafs"])
    out = net(torch.randn(2, 1, 32, 32))
    assert taps["decoder.up4"] is taps["decoder.up4.uafs"]  # the decoder taps are the re-weighted maps
    loss = torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 32)))
    loss = loss + 0.1 * affseg.pdcr_loss(taps["decoder.up4"], torch.randint(0, 3, (2, 32, 32)), num_classes=3)
    loss.backward()
    assert all(b.attention[0].weight.grad is not None for b in blocks)
    net3 = UNet(1, 2, dims=3, channels=(2, 4, 4), uafs=True)
    assert net3.decoder.up2.uafs.dims == 3
    assert net3(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


# -- MeanTeacher ---------------------------------------------------------------------------------
def _tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.ReLU(),
                               torch.nn.Dropout(0.5))


def _train_step(mt, opt):
    opt.zero_grad()
    mt(torch.randn(4, 1, 6, 6)).square().mean().backward()
    opt.step()


def test_mean_teacher_ema_matches_the_formula():
    mt = MeanTeacher(_tiny(), ema_decay=0.9)
    assert all(not p.requires_grad for p in mt.teacher.parameters())
    opt = torch.optim.SGD(mt.student.parameters(), lr=0.5)
    _train_step(mt, opt)
    assert all(p.grad is None for p in mt.teacher.parameters())
    t0 = {k: v.clone() for k, v in mt.teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in mt.student.state_dict().items()}
    assert not torch.equal(t0["0.weight"], s0["0.weight"])
    assert mt.update() == 0.9
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(mt.teacher.state_dict()[key], 0.9 * t0[key] + 0.1 * s0[key], rtol=0, atol=1e-7)
    assert int(mt.teacher[1].num_batches_tracked) == int(mt.student[1].num_batches_tracked) == 1
    # SSL4MIS warm-up: alpha = min(1 - 1/(step + 1), ema_decay)
    t1 = {k: v.clone() for k, v in mt.teacher.state_dict().items()}
    alpha = mt.update(step=3)
    assert alpha == pytest.approx(0.75)
    torch.testing.assert_close(mt.teacher[0].weight, 0.75 * t1["0.weight"] + 0.25 * s0["0.weight"], rtol=0, atol=1e-7)
    assert mt.update(step=1000) == 0.9
    assert mt.update(step=0) == 0.0 and torch.equal(mt.teacher[0].weight, mt.student[0].weight)
    assert int(mt.num_updates) == 4
    with pytest.raises(ValueError):
        mt.update(step=-1)


def test_mean_teacher_buffers_modes_and_state_dict():
    mt = MeanTeacher(_tiny(), buffers="none")
    opt = torch.optim.SGD(mt.student.parameters(), lr=0.1)
    _train_step(mt, opt)
    mt.update()
    assert torch.equal(mt.teacher[1].running_mean, torch.zeros(2))  # buffers left alone
    copying = MeanTeacher(_tiny(), buffers="copy")
    assert copying.buffer_mode == "copy" and callable(copying.buffers)  # the option must not shadow Module.buffers()
    # the teacher stays in eval mode (running stats, no dropout) unless teacher_mode="train"
    mt.train()
    assert mt.student.training and not mt.teacher.training and not mt.teacher[1].training
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(mt.teacher(x), mt.teacher(x))
    noisy = MeanTeacher(_tiny(), teacher_mode="train").train()
    assert noisy.teacher.training
    assert not noisy.eval().teacher.training
    # state_dict round trip: both models and the step counter
    mt2 = MeanTeacher(_tiny(), buffers="copy")
    mt.update(step=5)
    state = mt.state_dict()
    assert {"num_updates", "student.0.weight", "teacher.0.weight", "teacher.1.running_mean"} <= set(state)
    mt2.load_state_dict(state)
    assert int(mt2.num_updates) == 2
    for key, value in mt.teacher.state_dict().items():
        assert torch.equal(mt2.teacher.state_dict()[key], value)
    assert torch.equal(mt2.student[0].weight, mt.student[0].weight)
    with pytest.raises(ValueError):
        MeanTeacher(_tiny(), ema_decay=1.5)


def test_mean_teacher_wrapped_student_and_taps():
    net = _tiny()
    taps = FeatureTaps(net, ["0"])
    mt = MeanTeacher(torch.nn.DataParallel(net))  # the teacher copies the network inside
    assert isinstance(mt.teacher, torch.nn.Sequential)
    assert not mt.teacher[0]._forward_hooks  # the student's tap hooks are not copied
    x = torch.randn(2, 1, 6, 6)
    mt(x)
    student_map = taps["0"]
    with torch.no_grad():
        mt.teacher(x)
    assert taps["0"] is student_map  # the teacher did not overwrite the student's tap
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    _train_step(mt, opt)
    t0 = mt.teacher[0].weight.clone()
    mt.update()
    torch.testing.assert_close(mt.teacher[0].weight, 0.99 * t0 + 0.01 * net[0].weight, rtol=0, atol=1e-7)
    mt.student = torch.nn.Linear(2, 2)  # a student that no longer matches
    with pytest.raises(RuntimeError, match="no longer match"):
        mt.update()


def test_mean_teacher_ddp_student(tmp_path):
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group of its own")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net = _tiny()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        taps = FeatureTaps(ddp, ["0"])  # found behind the "module." prefix
        mt = MeanTeacher(ddp)
        assert isinstance(mt.teacher, torch.nn.Sequential) and "student.module.0.weight" in mt.state_dict()
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        _train_step(mt, opt)
        t0 = mt.teacher[0].weight.clone()
        mt.update()
        torch.testing.assert_close(mt.teacher[0].weight, 0.99 * t0 + 0.01 * net[0].weight, rtol=0, atol=1e-7)
        assert taps["0"].shape == (4, 2, 6, 6)
    finally:
        dist.destroy_process_group()


# -- segmentation_models_pytorch (runs where it is installed) -------------------------------------
def test_taps_segmentation_models_pytorch():
    smp = pytest.importorskip("segmentation_models_pytorch")
    net = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=3)
    taps = FeatureTaps(net, ["decoder"])
    net(torch.randn(2, 1, 64, 64))
    feats = taps["decoder"]
    assert feats.shape[0] == 2 and feats.shape[-2:] == (64, 64)
    affseg.pdcr_loss(feats, torch.randint(0, 3, (2, 64, 64)), num_classes=3, num_samples=256).backward()
    assert net.encoder.conv1.weight.grad is not None
