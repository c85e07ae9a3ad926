"""EfficientViT's ONNX export form (models/efficientvit_onnx.py): the fused backbone's function in ONNX Runtime for
M0-M5, static and dynamic; a graph in which ORT runs no Transposes but the window cut; the model left as it was."""
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


def test_graph_leaves_ort_no_transposes_but_the_window_cut(tmp_path):
    """The fast path's export put a Transpose pair around every depthwise conv and ran 1x1 convs as MatMul+Add. The
    form's only Transposes next to Convs are NCHW <-> NHWC permutes (one into and one out of each attention block,
    a pair around each head's q depthwise conv), which ORT folds into its NCHWc reorders; q, k and v are
    ``tokens @ W`` with the constant second (what INT8 quantizers need), so ORT runs exactly the window cut's
    2 Transposes per windowed block."""
    onnxslim = pytest.importorskip('onnxslim')
    m = fused('m0')
    g = onnxslim.slim(onnx.load(str(export(m, torch.zeros(1, 3, 64, 96), tmp_path / 'm0.onnx'))))  # as export.py
    producer = {o: n for n in g.graph.node for o in n.output}
    consts = {t.name for t in g.graph.initializer}
    perm = {n.output[0]: list(n.attribute[0].ints) for n in g.graph.node if n.op_type == 'Transpose'}
    convs = [n for n in g.graph.node if n.op_type == 'Conv']
    assert convs and all(perm.get(n.input[0], [0, 3, 1, 2]) == [0, 3, 1, 2] for n in convs)
    after_conv = [perm[o] for o in perm if producer[producer[o].input[0]].op_type == 'Conv']
    assert after_conv and all(p == [0, 2, 3, 1] for p in after_conv)
    blocks = [b for s in (m.blocks1, m.blocks2, m.blocks3) for b in s if isinstance(b, ev.EfficientViTBlock)]
    heads = sum(b.mixer.m.attn.num_heads for b in blocks)
    windowed = 1  # at 64x96 only stage 1 (8x12) is larger than one 7x7 window
    # per block NHWC in and NCHW out, per windowed block the cut both ways, per head q's pair and k's transpose
    assert len(perm) == 2 * len(blocks) + 2 * windowed + 3 * heads
    matmuls = [n for n in g.graph.node if n.op_type in ('MatMul', 'Gemm')]  # onnxslim makes MatMul+Add a Gemm
    assert not any(n.input[0] in consts for n in matmuls)
    assert sum(n.input[1] in consts for n in matmuls) == 3 * heads  # q, k, v
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / 'ort.onnx')
    so.log_severity_level = 3
    onnx.save(g, str(tmp_path / 'slim.onnx'))
    ort.InferenceSession(str(tmp_path / 'slim.onnx'), so, providers=['CPUExecutionProvider'])
    ops = [n.op_type for n in onnx.load(str(tmp_path / 'ort.onnx')).graph.node]
    if 'ReorderInput' not in ops:
        pytest.skip("ORT's NCHWc layout is x86 AVX2/AVX-512 only; the permutes it folds stay on this CPU")
    assert ops.count('Transpose') == 2 * windowed


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
