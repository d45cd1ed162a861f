"""The GPU backend, loaded on first use of TargetDevice="GPU".

portgrad._cuda is built when the CUDA toolkit is present at install time. portgrad._gpu_emulator
runs the same CUDA kernel sources on the CPU (blocks in turn, threads as fibers): it is what the
test suite uses on machines without a GPU, and it is chosen only when asked for with
PORTGRAD_GPU_EMULATOR=1 (or =n for n emulated devices). It is slow, and exists for testing.
"""
import importlib
import os
import threading

import numpy as np

from . import _core

_lock = threading.Lock()
_module = None


def _import_cuda():
    try:
        return importlib.import_module("portgrad._cuda")
    except ImportError as e:
        if "No module named" in str(e):
            raise ValueError(
                'TargetDevice "GPU" is not available: this build of portgrad has no CUDA backend (no CUDA compiler '
                'was found when it was installed). Use TargetDevice="CPU", or install the CUDA toolkit (nvcc on the '
                'PATH) and reinstall portgrad from its source folder: pip install --force-reinstall --no-deps .'
            ) from None
        raise ValueError(f'TargetDevice "GPU" is not available: the CUDA module failed to load ({e})') from None


def _why_no_gpu(why):
    """The CUDA runtime's reason in words a user can act on: without an NVIDIA driver it says the
    driver version is insufficient, which reads as if an upgrade would help."""
    if not why:
        return "no CUDA device is visible"
    if "driver version is insufficient" in why or "no CUDA-capable device" in why:
        return f"this machine has no usable NVIDIA GPU and driver (the CUDA runtime says: {why})"
    return why


def module():
    """The GPU module in use (loading and registering it on first call); ValueError if there is none."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            if os.environ.get("PORTGRAD_GPU_EMULATOR", "0") not in ("", "0"):
                mod = importlib.import_module("portgrad._gpu_emulator")
            else:
                mod = _import_cuda()
                count, why = mod.device_count()
                if count == 0:
                    raise ValueError(f'TargetDevice "GPU" is not available: {_why_no_gpu(why)}; use TargetDevice="CPU"')
            _core.register_gpu_backend(mod.backend(), mod.DeviceArray)
            _module = mod
    return _module


def available() -> bool:
    """Whether TargetDevice="GPU" can run here (a CUDA device, or the emulator when asked for)."""
    try:
        module()
        return True
    except (ValueError, ImportError):
        return False


def device_count() -> int:
    """GPUs usable as TargetDevice=("GPU", i); 0 where there is none."""
    try:
        return module().device_count()[0]
    except (ValueError, ImportError):
        return 0


def is_device_array(value) -> bool:
    """An array in GPU memory that the engine reads in place: __cuda_array_interface__ (CuPy, PyTorch
    CUDA, DeviceArray) or DLPack on a CUDA device (JAX and any other DLPack producer)."""
    if isinstance(value, np.ndarray):
        return False
    if hasattr(value, "__cuda_array_interface__"):
        return True
    device = getattr(value, "__dlpack_device__", None)
    if device is None or not hasattr(value, "__dlpack__"):
        return False
    try:
        return device()[0] in (2, 13)  # kDLCUDA, kDLCUDAManaged
    except Exception:  # noqa: BLE001 - a producer that cannot say where it lives is not a GPU array here
        return False
