"""Window attention's core in ONNX Runtime two ways: the standard ops the export form uses, against ORT's fused
contrib kernel (com.microsoft MultiHeadAttention, one op per head). Answers whether the contrib op could close
EfficientViT's gap to yolov5n in ORT (README, "Benchmarks").

Per head of one attention block: softmax(q^T k + bias) and v attn^T on (windows, channels, tokens) tensors, as
standard ops (Transpose, MatMul, Add, Softmax, Transpose, MatMul; ORT fuses the transposes into its MatMuls), or one
MultiHeadAttention on (windows, tokens, channels) with the bias as its attention_bias input. Defaults: EfficientViT-M0's
first stage at 640 px (144 windows of 7x7 = 49 tokens, 16 channels per head, 4 cascaded heads). Both graphs are
built with onnx.helper, checked to compute the same outputs, and timed with benchmarks/timing.py's method (same
threads, spinning off, warm turns, interleaved, medians).

Usage:
    python benchmarks/attention_ops.py
    python benchmarks/attention_ops.py --windows 36 --runs 50
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

from benchmarks import timing  # noqa: E402


def standard_graph(windows: int, tokens: int, dim: int, heads: int, bias: np.ndarray):
    """Every head as the export form runs it: inputs q{i}, k{i}, v{i} of shape (windows, dim, tokens)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs = [], [], []
    for i in range(heads):
        inputs += [helper.make_tensor_value_info(f'{n}{i}', TensorProto.FLOAT, [windows, dim, tokens]) for n in 'qkv']
        nodes += [helper.make_node('Transpose', [f'q{i}'], [f'qt{i}'], perm=[0, 2, 1]),
                  helper.make_node('MatMul', [f'qt{i}', f'k{i}'], [f'logits{i}']),
                  helper.make_node('Add', [f'logits{i}', 'bias'], [f'biased{i}']),
                  helper.make_node('Softmax', [f'biased{i}'], [f'attn{i}'], axis=-1),
                  helper.make_node('Transpose', [f'attn{i}'], [f'attn_t{i}'], perm=[0, 2, 1]),
                  helper.make_node('MatMul', [f'v{i}', f'attn_t{i}'], [f'out{i}'])]
        outputs.append(helper.make_tensor_value_info(f'out{i}', TensorProto.FLOAT, [windows, dim, tokens]))
    graph = helper.make_graph(nodes, 'standard', inputs, outputs, [numpy_helper.from_array(bias, 'bias')])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])


def contrib_graph(windows: int, tokens: int, dim: int, heads: int, bias: np.ndarray):
    """Every head as one com.microsoft MultiHeadAttention: inputs of shape (windows, tokens, dim)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs = [], [], []
    for i in range(heads):
        inputs += [helper.make_tensor_value_info(f'{n}{i}', TensorProto.FLOAT, [windows, tokens, dim]) for n in 'qkv']
        nodes.append(helper.make_node('MultiHeadAttention', [f'q{i}', f'k{i}', f'v{i}', '', '', 'bias'], [f'out{i}'],
                                      domain='com.microsoft', num_heads=1, scale=1.0))
        outputs.append(helper.make_tensor_value_info(f'out{i}', TensorProto.FLOAT, [windows, tokens, dim]))
    graph = helper.make_graph(nodes, 'contrib', inputs, outputs, [numpy_helper.from_array(bias[None, None], 'bias')])
    opsets = [helper.make_opsetid('', 13), helper.make_opsetid('com.microsoft', 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run(windows: int = 144, tokens: int = 49, dim: int = 16, heads: int = 4, runs: int = 30,
        threads: int = 0) -> dict[str, float]:
    """Median ms of each graph (after checking both give the same outputs)."""
    import tempfile

    threads = threads or timing.physical_cores()
    rng = np.random.default_rng(0)
    bias = rng.standard_normal((tokens, tokens)).astype(np.float32)
    feed = {f'{n}{i}': rng.standard_normal((windows, dim, tokens)).astype(np.float32) for i in range(heads)
            for n in 'qkv'}
    with tempfile.TemporaryDirectory() as d:
        sessions = {}
        for name, build in (('standard ops', standard_graph), ('MultiHeadAttention', contrib_graph)):
            f = Path(d) / f'{name.split()[0].lower()}.onnx'
            f.write_bytes(build(windows, tokens, dim, heads, bias).SerializeToString())
            sessions[name] = timing.ort_session(f, threads)
    tok = {k: v.transpose(0, 2, 1).copy() for k, v in feed.items()}  # (windows, tokens, dim) for the contrib op
    a = sessions['standard ops'].run(None, feed)
    b = sessions['MultiHeadAttention'].run(None, tok)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y.transpose(0, 2, 1), rtol=1e-4, atol=1e-5)
    tasks = {'standard ops': lambda: sessions['standard ops'].run(None, feed),
             'MultiHeadAttention': lambda: sessions['MultiHeadAttention'].run(None, tok)}
    res = timing.interleaved(tasks, runs=runs, warmup=3, per_turn=timing.INFERENCE_PER_TURN)
    return {k: statistics.median(v) for k, v in res.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--windows', type=int, default=144, help='windows (batch of the attention)')
    p.add_argument('--tokens', type=int, default=49, help='tokens per window')
    p.add_argument('--dim', type=int, default=16, help='channels per head')
    p.add_argument('--heads', type=int, default=4, help='heads (one op chain each)')
    p.add_argument('--runs', type=int, default=30, help='timed turns')
    p.add_argument('--threads', type=int, default=0, help='ORT intra-op threads (0: the physical cores)')
    opt = p.parse_args(argv)
    ms = run(opt.windows, opt.tokens, opt.dim, opt.heads, opt.runs, opt.threads)
    base = ms['standard ops']
    print(f'{opt.heads} heads x {opt.windows} windows x {opt.tokens} tokens x {opt.dim} channels, '
          f'{opt.threads or timing.physical_cores()} threads, ORT spinning off, medians of {opt.runs} warm turns; '
          f'{timing.cpu_name()} ({timing.cpu_isa()})')
    for k, v in ms.items():
        print(f'  {k:20s} {v:7.3f} ms  ({v / base:.2f}x)')
    return ms


if __name__ == '__main__':
    main()
