"""Where the fused kernels' loads sit, without a GPU: compile one for sm_90 and print its SASS's memory operations.

Triton compiles for a target GPU on any machine (`triton.compile` with a `GPUTarget`); its wheel carries `ptxas`,
`nvdisasm` and `cuobjdump`. This prints, in program order, the global loads (`LDG`, `LDGSTS`), the wait on the kernel
before (`ACQBULK`, PDL's `griddepcontrol.wait`), barriers, branches, tensor-core ops and stores, then the registers
per thread and any spill. It is how the preload switches (`fused.GEMV_PRELOAD`, `fused.RMS_PRELOAD`) were checked:
without them a weight tile's load sits after the previous tile's barriers; with them all sit before `ACQBULK`.
A structure check, not a timing: `benchmarks/fused.py` on a GPU times them.

    pip install --target /tmp/tri triton==3.6.0   # not a project dependency
    PYTHONPATH=/tmp/tri:. python benchmarks/fused_sass.py gemv_res --kc 3072      # down projection, preloaded
    PYTHONPATH=/tmp/tri:. python benchmarks/fused_sass.py rms_dot --glu --split 2 --kc 1024 --pre 2
    PYTHONPATH=/tmp/tri:. python benchmarks/fused_sass.py attn --pre 2           # the cache read before the wait
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from voicepipe.serve.engine import fused

PTR = {"x_ptr": "*bf16", "w_ptr": "*bf16", "ln_ptr": "*bf16", "y_ptr": "*bf16", "r_ptr": "*bf16", "ws_ptr": "*fp32",
       "cnt_ptr": "*i32", "qkv_ptr": "*bf16", "qkw_ptr": "*bf16", "cos_ptr": "*bf16", "sin_ptr": "*bf16",
       "pos_ptr": "*i64", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "o_ptr": "*bf16", "lg_ptr": "*bf16",
       "temp_ptr": "*fp32", "greedy_ptr": "*i1", "ex_ptr": "*fp32", "scr_ptr": "*i32", "out_ptr": "*i64",
       "emb_w_ptr": "*bf16", "emb_ptr": "*bf16"}
# what Triton's launcher marks divisible by 16 at the real shapes
DIV16 = ("N", "K", "sxm", "swn", "srm", "sym", "s_qkv", "s_kb", "s_kh", "s_kl", "s_o", "s_cs", "s_lg", "V", "E", "s_ew",
         "s_e")
SHOWN = re.compile(r"LDG|LDGSTS|LDGDEPBAR|ACQBULK|BAR\.SYNC|BRA|HMMA|WGMMA|STG|ATOM")


def compile_sm90(fn, const: dict, warps: int, stages: int):
    """`fn` compiled for sm_90 with these constexprs (a constexpr left out takes its default, as at a launch)."""
    const = {k: v for k, v in const.items() if k in fn.arg_names}
    const.update({p.name: p.default for p in fn.params
                  if p.is_constexpr and p.name not in const and p.default is not inspect.Parameter.empty})
    sig = {n: "constexpr" if n in const else PTR.get(n, "fp32" if n in ("eps", "scale") else "i32")
           for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in fn.arg_names
             if n not in const and (n in PTR or n in DIV16)}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel", choices=["gemv_res", "rms_dot", "attn", "dot_res", "attn_rows", "sample"])
    ap.add_argument("--kc", type=int, default=0, help="KC: K at compile time (0: the runtime loop)")
    ap.add_argument("--pre", type=int, default=1, help="rms_dot: weight tiles loaded before the wait (1-2); "
                    "attn: 2 for the cache loaded before the wait")
    ap.add_argument("--split", type=int, default=2, help="rms_dot, dot_res: SPLIT")
    ap.add_argument("--glu", action="store_true", help="rms_dot: the gate/up + SiLU form")
    ap.add_argument("--align", action="store_true", help="dot_res: ALIGN (`fused.SPLIT_ALIGN`)")
    ap.add_argument("--rows-split", type=int, default=1, help="attn_rows: SPLIT (`fused.ROWS_ATTN_SPLIT`)")
    ap.add_argument("--warps", type=int, default=0, help="num_warps (0: the op's fused.CONFIG / ATTN_WARPS)")
    a = ap.parse_args()
    ks = fused._kernels()
    if a.kernel == "gemv_res":
        kind, bn, bk, warps, stages = fused.CONFIG["linear_residual"]
        k = compile_sm90(ks[1], dict(BM=2, BN=bn, BK=bk, PDL=True, KC=a.kc), a.warps or warps, stages)
    elif a.kernel == "attn":  # the code predictor's: 16 query heads, 8 KV heads of 128, a cache of 16 positions
        k = compile_sm90(ks[2], dict(NH=16, KVH=8, HD=128, L=16, PDL=True, PRE=a.pre > 1), a.warps or fused.ATTN_WARPS,
                         1)
    elif a.kernel == "dot_res":  # the matmul + residual op above 2 rows (16-row tiles, split-K)
        kind, bn, bk, warps, stages = fused.DOT_CONFIG["linear_residual"]
        k = compile_sm90(ks[4], dict(BM=16, BN=bn, BK=bk, DOT_F32=False, SPLIT=a.split, PDL=True, ALIGN=a.align),
                         a.warps or warps, stages)
    elif a.kernel == "attn_rows":  # the talker's: 16 query heads, 8 KV heads of 128, blocks of ROWS_ATTN_BLOCK
        k = compile_sm90(ks[5], dict(NH=16, KVH=8, HD=128, BL=fused.ROWS_ATTN_BLOCK, NB=4, PDL=True,
                                     SPLIT=a.rows_split), a.warps or fused.ROWS_ATTN_WARPS, fused.ROWS_ATTN_STAGES)
    elif a.kernel == "sample":  # top-k sampling + the code's embedding row, vocabulary 2048, k <= 64
        k = compile_sm90(ks[3], dict(VP=2048, KP=64, EMB=True, EP=2048, PDL=True), a.warps or fused.SAMPLE_WARPS, 1)
    else:
        kind, bn, bk, warps, stages = fused.CONFIG["rms_glu" if a.glu else "rms_linear"]
        k = compile_sm90(ks[0]["dot"], dict(GLU=a.glu, BM=16, BN=bn, BK=bk, DOT_F32=False, PDL=True,
                                            SPLIT=a.split, KC=a.kc, PRE=a.pre), a.warps or warps, stages)
    tools = Path(triton.__file__).parent / "backends/nvidia/bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = subprocess.run([tools / "nvdisasm", "-c", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tools / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
    n = 0
    for line in sass.splitlines():
        ins = re.sub(r"/\*[0-9a-f]+\*/", "", line).strip()
        if ins and not ins.startswith((".", "//")):
            n += 1
            if SHOWN.search(ins):
                print(f"{n:5d}  {ins[:100]}")
    print(next((x.strip() for x in res.splitlines() if "REG:" in x), res.strip()))


if __name__ == "__main__":
    main()
