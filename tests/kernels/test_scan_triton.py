"""Triton scan kernel, run by Triton's CPU interpreter (TRITON_INTERPRET=1), against the reference.

Triton only interprets when TRITON_INTERPRET=1 is set before triton itself is first imported, which another
test module may already have done in this process. So the Triton side runs in one child process started with
that variable (`_worker` below writes its outputs to a file); the comparisons against the reference run here.
The interpreter is slow (milliseconds per time step), so shapes stay tiny.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import TENSOR_KEYS, grad_inputs, make_inputs

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

RTOL, ATOL = 1e-4, 1e-4  # mamba_ssm's own fp32 tolerances: rtol=6e-4, atol=2e-3
ROOT = Path(__file__).resolve().parents[2]

CASES = [
    (1, ("var", "var"), (True, True, True, True)),
    (7, ("const", "const"), (False, False, False, False)),
    (7, ("g2", "g2"), (True, False, True, True)),
    (7, ("g1", "g2"), (False, True, False, True)),
    (64, ("var", "const"), (True, True, False, False)),
    (64, ("const", "g2"), (False, False, True, True)),
    (128, ("g2", "var"), (True, True, True, True)),
]




def _case_inputs(L, layout, flags):
    return make_inputs(2, 6 if "g2" not in layout else 4, L, 5, *layout, *flags, seed=L)


def _block_inputs():
    # 3 blocks of 2 channels over 6 channels in 3 groups of 2: group index per channel inside a block
    kw = make_inputs(1, 6, 9, 4, "var", "var", seed=5)
    kw["B"] = torch.randn(1, 3, 4, 9, generator=torch.Generator().manual_seed(5))
    return kw


def _half_inputs():
    kw = make_inputs(1, 4, 7, 4, seed=6)
    return {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _grad_inputs():
    return make_inputs(1, 4, 7, 3, "g2", "var", seed=8)


# backward cases: (length, channels, layouts, flags, chunk, block_d). Chunks shorter than the sequence, a last
# partial chunk, blocks smaller than a group (atomic sums per group) and constant B/C summed over the batch.
GRAD_CASES = [
    (9, 6, ("var", "var"), (True, True, True, True), 4, None),
    (7, 4, ("g2", "g2"), (True, False, True, True), 3, None),
    (8, 6, ("const", "const"), (False, False, False, False), 3, None),
    (11, 4, ("g1", "g2"), (False, True, False, True), 64, None),
    (10, 6, ("const", "var"), (True, True, True, False), 4, None),
    (5, 8, ("g2", "const"), (True, True, False, True), 2, 2),
]


def _grad_case(L, d, layout, flags):
    kw = make_inputs(2, d, L, 5, *layout, *flags, seed=L)
    return kw, torch.randn(2, d, L, generator=torch.Generator().manual_seed(L + 1))


def _strided_inputs():
    """D and delta_bias as strided views (every second float of a longer vector)."""
    kw = make_inputs(2, 4, 9, 3, "var", "var", True, False, True, True, seed=3)
    g = torch.Generator().manual_seed(4)
    kw["D"], kw["delta_bias"] = torch.randn(8, generator=g)[::2], torch.rand(8, generator=g)[::2]
    return kw, torch.randn(2, 4, 9, generator=g)


def _worker(path: str) -> None:
    """Child process (TRITON_INTERPRET=1): run the Triton kernel on every case, save the results."""
    from sepcli.kernels import scan_triton as st

    assert st.INTERPRETED
    res = {"cases": []}
    for case in CASES:
        res["cases"].append(st.selective_scan_triton(**_case_inputs(*case), return_last_state=True))
    kw = _block_inputs()
    res["block"] = st.scan_forward_triton(**{k: kw[k] for k in TENSOR_KEYS}, delta_softplus=True, block_d=2)[0]
    res["half"] = st.selective_scan_triton(**_half_inputs())
    a = grad_inputs(_grad_inputs())
    g = torch.randn(1, 4, 7, generator=torch.Generator().manual_seed(2))
    (st.selective_scan_triton(**a) * g).sum().backward()
    res["grads"] = {k: a[k].grad for k in TENSOR_KEYS}
    res["dout"] = g
    res["grad_cases"] = []
    for L, d, layout, flags, chunk, block_d in GRAD_CASES:
        kw, dout = _grad_case(L, d, layout, flags)
        res["grad_cases"].append(st.scan_backward_triton(dout, **{k: kw[k] for k in TENSOR_KEYS}, chunk=chunk,
                                                          block_d=block_d, delta_softplus=kw["delta_softplus"]))
    kw, dout = _strided_inputs()
    res["strided"] = (st.selective_scan_triton(**kw),
                      st.scan_backward_triton(dout, **{k: kw[k] for k in TENSOR_KEYS}, chunk=4, delta_softplus=True))
    os.environ["SEPCLI_SCAN"] = "triton"  # the dispatcher, forced to Triton on CPU tensors (interpreter)
    from sepcli.kernels import backend_for, selective_scan

    kw = _case_inputs(*CASES[2])
    res["dispatch"] = (backend_for(kw["u"]), selective_scan(**kw))
    torch.save(res, path)


@pytest.fixture(scope="module")
def triton_out(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton") / "out.pt"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    code = f"import tests.kernels.test_scan_triton as t; t._worker({str(path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_triton_matches_reference(triton_out, i):
    out, last = triton_out["cases"][i]
    ref, ref_last = selective_scan_ref(**_case_inputs(*CASES[i]), return_last_state=True)
    assert out.dtype == ref.dtype and out.shape == ref.shape and last.shape == ref_last.shape
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)


def test_triton_block_smaller_than_channels_and_groups(triton_out):
    torch.testing.assert_close(triton_out["block"], selective_scan_ref(**_block_inputs()), rtol=RTOL, atol=ATOL)


def test_triton_half_input_keeps_dtype(triton_out):
    out = triton_out["half"]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), selective_scan_ref(**_half_inputs()).float(), rtol=1e-2, atol=1e-2)


def test_triton_backward_through_autograd_matches_reference(triton_out):
    r = grad_inputs(_grad_inputs())
    (selective_scan_ref(**r) * triton_out["dout"]).sum().backward()
    for key in TENSOR_KEYS:
        torch.testing.assert_close(triton_out["grads"][key], r[key].grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("i", range(len(GRAD_CASES)))
def test_triton_backward_kernel_matches_reference_gradients(triton_out, i):
    L, d, layout, flags, _, _ = GRAD_CASES[i]
    kw, dout = _grad_case(L, d, layout, flags)
    r = grad_inputs(kw)
    (selective_scan_ref(**r) * dout).sum().backward()
    for key, got in zip(TENSOR_KEYS, triton_out["grad_cases"][i]):
        if kw[key] is None:
            assert got is None, key
            continue
        assert got.shape == kw[key].shape and got.dtype == kw[key].dtype, key
        torch.testing.assert_close(got, r[key].grad, rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")


def test_dispatcher_forced_to_triton(triton_out):
    name, out = triton_out["dispatch"]
    assert name == "triton"
    torch.testing.assert_close(out, selective_scan_ref(**_case_inputs(*CASES[2])), rtol=RTOL, atol=ATOL)


COMPILE_CODE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sepcli.kernels import scan_triton as st

def compile_for_sm80(fn, consts):
    sig = {n: 'constexpr' if n in consts else ('*fp32' if n.endswith('_ptr') else 'i32') for n in fn.arg_names}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget('cuda', 80, 32))

for var_b, var_c, flag in ((True, False, True), (False, True, False)):
    flags = dict(HAS_D=flag, HAS_Z=flag, HAS_BIAS=flag, SOFTPLUS=flag, BLOCK_D=16, BLOCK_N=16)
    for fn, consts in ((st._scan_fwd_kernel, flags), (st._scan_bwd_kernel, dict(flags, VAR_B=var_b, VAR_C=var_c))):
        assert 'cubin' in compile_for_sm80(fn, consts).asm
print('compiled')
"""


def test_triton_kernels_compile_for_a_gpu_target():
    """The interpreter does not type-check like the compiler (loop-carried types, scalar/block mixes): compile
    both kernels to an sm_80 cubin (no GPU needed), in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", COMPILE_CODE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    missing_ptxas = "ptxas" in proc.stderr and ("not found" in proc.stderr or "No such file" in proc.stderr)
    if "No module named 'triton.backends.nvidia'" in proc.stderr or missing_ptxas:
        pytest.skip("this triton has no CUDA compiler backend")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


def test_triton_reads_strided_D_and_delta_bias_as_their_values(triton_out):
    kw, dout = _strided_inputs()
    assert not kw["D"].is_contiguous()
    out, grads = triton_out["strided"]
    torch.testing.assert_close(out, selective_scan_ref(**kw), rtol=RTOL, atol=ATOL)
    r = grad_inputs(kw)
    (selective_scan_ref(**r) * dout).sum().backward()
    for key, got in zip(TENSOR_KEYS, grads):
        if got is not None:
            torch.testing.assert_close(got, r[key].grad, rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
