"""EfficientViT's ONNX export form (models/efficientvit_onnx.py): the fused backbone's function in ONNX Runtime for
M0-M5, static and dynamic; a graph with no layout Transposes around its convolutions; the model left as it was."""
import numpy as np
import onnx
import pytest
import torch

from models import efficientvit as ev
from models.efficientvit_onnx import EfficientViTForm, onnx_export_form
from tests.models.test_efficientvit import VARIANTS, build, rel_diff, well_conditioned

ort = pytest.importorskip('onnxruntime')
pytestmark = [pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning'),
              pytest.mark.filterwarnings('ignore::DeprecationWarning')]  # the TorchScript-based exporter's notices


def fused(v: str, dtype: torch.dtype = torch.float32, exact: bool = False) -> ev.EfficientViT:
    """A well-conditioned, fused backbone with non-zero attention biases (zero ones could be folded away)."""
    return well_conditioned(build(v)).to(dtype).eval().fuse(exact=exact)


def export(m: torch.nn.Module, x: torch.Tensor, f, dynamic: bool = False, opset: int = 12):
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}} if dynamic else None
    with onnx_export_form(m, dynamic):
        torch.onnx.export(m, (x,), str(f), input_names=['images'], output_names=['p3', 'p4', 'p5'],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return f


def run(f, x: torch.Tensor) -> list[torch.Tensor]:
    s = ort.InferenceSession(str(f), providers=['CPUExecutionProvider'])
    return [torch.from_numpy(o) for o in s.run(None, {'images': x.numpy()})]


@pytest.mark.parametrize('v', VARIANTS)
def test_form_is_the_fused_function_in_float64(v):
    """Same function, not an approximation: the form in torch against the plain path, float64 (M0-M5)."""
    m = fused(v, torch.float64, exact=True)
    g = torch.Generator().manual_seed(0)
    # stage 1 in padded windows, later stages whole-map; M0 also at a size with stage 2 windowed and W < H
    for h, w in ((64, 96), (120, 72))[:2 if v == 'm0' else 1]:
        x = torch.randn(1, 3, h, w, generator=g, dtype=torch.float64)
        with torch.no_grad():
            want = m(x)
            with onnx_export_form(m):
                got = m(x)
        assert rel_diff(want, got) < 1e-10, (h, w)


@pytest.mark.parametrize('v', VARIANTS)
def test_ort_matches_fused_model(v, tmp_path):
    m = fused(v)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = m(x)
    assert rel_diff(want, run(export(m, x, tmp_path / f'{v}.onnx'), x)) < 1e-4


def test_dynamic_export_serves_other_sizes_and_batches(tmp_path):
    """Traced at 256 (every stage in padded windows), the dynamic graph is exact for any input of that size class."""
    m = fused('m0')
    f = export(m, torch.zeros(1, 3, 256, 256), tmp_path / 'dyn.onnx', dynamic=True)
    g = torch.Generator().manual_seed(2)
    for shape in ((1, 3, 256, 256), (2, 3, 256, 320), (1, 3, 320, 288), (1, 3, 448, 448)):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            want = m(x)
        assert rel_diff(want, run(f, x)) < 1e-4, shape


def test_graph_has_no_layout_transposes_around_convs(tmp_path):
    """The fast path's export put a Transpose pair around every depthwise conv and ran 1x1 convs as MatMul+Add; the
    form feeds every Conv from another op and leaves 2 Transposes per windowed attention block, 2 per head."""
    onnxslim = pytest.importorskip('onnxslim')
    m = fused('m0')
    g = onnxslim.slim(onnx.load(str(export(m, torch.zeros(1, 3, 64, 96), tmp_path / 'm0.onnx'))))  # as export.py
    producer = {o: n.op_type for n in g.graph.node for o in n.output}
    convs = [n for n in g.graph.node if n.op_type == 'Conv']
    assert convs and all(producer.get(n.input[0]) != 'Transpose' for n in convs)
    consumers = [n.op_type for n in g.graph.node for i in n.input if producer.get(i) == 'Conv']
    assert 'Transpose' not in consumers
    heads = sum(b.mixer.m.attn.num_heads for s in (m.blocks1, m.blocks2, m.blocks3) for b in s
                if isinstance(b, ev.EfficientViTBlock))
    windowed = 1  # at 64x96 only stage 1 (8x12) is larger than one 7x7 window
    assert sum(n.op_type == 'Transpose' for n in g.graph.node) == 2 * windowed + 2 * heads
    assert not any(n.op_type == 'Gemm' for n in g.graph.node)


def test_context_restores_the_model_and_needs_a_fused_backbone():
    m = fused('m0')
    keys = list(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = m(x)
    with pytest.raises(RuntimeError, match='boom'), onnx_export_form(m) as forms:
        assert forms == [m] and isinstance(m.export_form, EfficientViTForm)
        raise RuntimeError('boom')
    assert 'export_form' not in m._modules and list(m.state_dict()) == keys
    with onnx_export_form(m), onnx_export_form(m) as inner:  # nested: the outer block's form stays until it ends
        assert inner == [m] and 'export_form' in m._modules
    assert 'export_form' not in m._modules
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(want, m(x)))
    with onnx_export_form(torch.nn.Conv2d(3, 3, 1)) as forms:  # no EfficientViT: nothing to do
        assert forms == []
    with pytest.raises(TypeError, match='needs a fused backbone: call fuse'), onnx_export_form(build('m0')):
        pass


def test_train_mode_ignores_the_form():
    m = fused('m0')
    x = torch.randn(1, 3, 64, 64)
    with onnx_export_form(m):
        calls = []
        m.export_form.register_forward_hook(lambda *a: calls.append(1))
        m.train()
        m(x)
        assert not calls
        m.eval()
        m(x)
        assert calls == [1]


def test_k_bias_is_softmax_invariant():
    """Why the form may drop the k bias: it shifts each row of logits by a constant."""
    g = torch.Generator().manual_seed(3)
    q, k, b = torch.randn(2, 49, 16, generator=g), torch.randn(2, 16, 49, generator=g), torch.randn(16, 1, generator=g)
    with_bias, without = (q @ (k + b)).softmax(-1), (q @ k).softmax(-1)
    np.testing.assert_allclose(with_bias, without, rtol=1e-5, atol=1e-7)
