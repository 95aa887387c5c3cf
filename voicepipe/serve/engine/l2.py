"""L2 persistence (CUDA's access policy window) through the CUDA runtime, by ctypes: torch exposes none of it, and
cuda-python would be one more dependency for five calls.

The code predictor re-reads the same ~157 MB of layer weights in each of a frame's 15 steps, more than an H100 /
H200's 50 MB L2 holds, so each step streams them from HBM again. A persisting window keeps a set-aside part of L2
for chosen bytes; this module sets the set-aside (`cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize)`), a
stream's window (kernels launched or captured on it) and a captured graph's kernel nodes' windows
(`EngineConfig.l2_persist_mb`; `benchmarks/fused.py --variants '[{"l2": ...}]'`).
"""

from __future__ import annotations

import ctypes
import glob
import os

import torch

ATTR_L2 = 38  # cudaDevAttrL2CacheSize
ATTR_MAX_PERSIST = 108  # cudaDevAttrMaxPersistingL2CacheSize
ATTR_MAX_WINDOW = 109  # cudaDevAttrMaxAccessPolicyWindowSize
LIMIT_PERSIST = 0x06  # cudaLimitPersistingL2CacheSize
LAUNCH_ATTR_WINDOW = 1  # cudaLaunchAttributeAccessPolicyWindow (= cudaStreamAttributeAccessPolicyWindow)
NORMAL, STREAMING, PERSISTING = 0, 1, 2  # cudaAccessProperty
NODE_KERNEL = 0  # cudaGraphNodeTypeKernel


class _Window(ctypes.Structure):
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hitRatio", ctypes.c_float),
                ("hitProp", ctypes.c_int), ("missProp", ctypes.c_int)]


class _AttrValue(ctypes.Union):  # cudaLaunchAttributeValue: 64 bytes
    _fields_ = [("accessPolicyWindow", _Window), ("pad", ctypes.c_char * 64)]


_lib: ctypes.CDLL | None = None


def cudart() -> ctypes.CDLL:
    """The CUDA runtime torch loaded (by soname, else from the nvidia wheels beside torch)."""
    global _lib
    if _lib is not None:
        return _lib
    torch.cuda.init()
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    site = os.path.dirname(os.path.dirname(torch.__file__))
    names += sorted(glob.glob(os.path.join(site, "nvidia", "**", "libcudart.so*"), recursive=True))
    for n in names:
        try:
            _lib = ctypes.CDLL(n)
            return _lib
        except OSError:
            continue
    raise OSError(f"no CUDA runtime library found (tried {names})")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        lib = cudart()
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"{what}: CUDA error {rc} ({lib.cudaGetErrorString(rc).decode()})")


def device_info(device: int = 0) -> dict[str, int]:
    """L2 size, the largest persisting set-aside and the largest window, in bytes."""
    out = {}
    for k, a in (("l2", ATTR_L2), ("max_persist", ATTR_MAX_PERSIST), ("max_window", ATTR_MAX_WINDOW)):
        v = ctypes.c_int()
        _check(cudart().cudaDeviceGetAttribute(ctypes.byref(v), a, device), f"cudaDeviceGetAttribute({a})")
        out[k] = v.value
    return out


def set_aside(nbytes: int) -> int:
    """Set the persisting L2 set-aside (the device's maximum at most); returns what the device reports after."""
    _check(cudart().cudaDeviceSetLimit(LIMIT_PERSIST, ctypes.c_size_t(nbytes)), "cudaDeviceSetLimit")
    v = ctypes.c_size_t()
    _check(cudart().cudaDeviceGetLimit(ctypes.byref(v), LIMIT_PERSIST), "cudaDeviceGetLimit")
    return v.value


def reset_persisting() -> None:
    """Demote every persisting line to normal (`cudaCtxResetPersistingL2Cache`)."""
    _check(cudart().cudaCtxResetPersistingL2Cache(), "cudaCtxResetPersistingL2Cache")


def _value(ptr: int, nbytes: int, hit_ratio: float) -> _AttrValue:
    v = _AttrValue()
    v.accessPolicyWindow = _Window(ptr, nbytes, hit_ratio, PERSISTING if nbytes else NORMAL, STREAMING)
    return v


def stream_window(stream: torch.cuda.Stream, ptr: int, nbytes: int, hit_ratio: float) -> None:
    """Kernels launched on `stream` from now on (and captured from it) keep `hit_ratio` of [ptr, ptr + nbytes) in
    the set-aside L2; nbytes 0 clears the window."""
    v = _value(ptr, nbytes, hit_ratio)
    _check(cudart().cudaStreamSetAttribute(ctypes.c_void_p(stream.cuda_stream), LAUNCH_ATTR_WINDOW, ctypes.byref(v)),
           "cudaStreamSetAttribute")


def graph_window(graph: torch.cuda.CUDAGraph, ptr: int, nbytes: int, hit_ratio: float) -> int:
    """Set the window on every kernel node of a graph captured with keep_graph=True, before it is instantiated;
    returns the number of kernel nodes set."""
    lib = cudart()
    raw = ctypes.c_void_p(graph.raw_cuda_graph())
    n = ctypes.c_size_t()
    _check(lib.cudaGraphGetNodes(raw, None, ctypes.byref(n)), "cudaGraphGetNodes")
    nodes = (ctypes.c_void_p * n.value)()
    _check(lib.cudaGraphGetNodes(raw, nodes, ctypes.byref(n)), "cudaGraphGetNodes")
    v = _value(ptr, nbytes, hit_ratio)
    done = 0
    for node in nodes:
        t = ctypes.c_int()
        _check(lib.cudaGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(t)), "cudaGraphNodeGetType")
        if t.value == NODE_KERNEL:
            _check(lib.cudaGraphKernelNodeSetAttribute(ctypes.c_void_p(node), LAUNCH_ATTR_WINDOW, ctypes.byref(v)),
                   "cudaGraphKernelNodeSetAttribute")
            done += 1
    return done


def pack(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One contiguous buffer holding copies of `tensors` (each start aligned to 256 bytes), and views of it shaped
    as they were: a window covers a byte range, so the bytes it should hold must be adjacent."""
    dt = tensors[0].dtype
    align = 256 // tensors[0].element_size()
    offs, n = [], 0
    for t in tensors:
        assert t.dtype == dt
        offs.append(n)
        n += -(-t.numel() // align) * align
    flat = torch.empty(n, dtype=dt, device=tensors[0].device)
    views = []
    for t, o in zip(tensors, offs, strict=True):
        v = flat[o : o + t.numel()].view(t.shape)
        v.copy_(t)
        views.append(v)
    return flat, views
