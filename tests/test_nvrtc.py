"""Every CUDA kernel compiles with NVRTC for sm_80 and sm_90 on a machine with no GPU (CI).

The compile is CuPy's: ``cupy.RawKernel(source, name, options=NVRTC_OPTIONS)`` hands NVRTC the
options that :func:`nvrtc_options` rebuilds here from CuPy's own helpers (its CCCL and header
include dirs, ``--std``, then ``-ftz=true``, ``-arch=sm_XX`` and ``--device-as-default-execution-space``
added on the way to ``nvrtcCompileProgram``), except CuPy's ``-I<CUDA>/include``: the kernels must
not need any CUDA header (an image without the toolkit's headers has none, and NVRTC has no
``cuda_fp16.h`` of its own). ``compile_using_nvrtc`` itself asks the device for its arch, so the
program is built through ``cupy.cuda.nvrtc`` directly.

Needs the wheels ``cupy-cuda12x`` and ``nvidia-cuda-nvrtc-cu12`` (no GPU, no CUDA runtime, no
toolkit); skipped, with the reason, where they are absent.
"""
from __future__ import annotations

import os

import pytest

from minilr.engines import cuda_kernels as ck

ARCHS = ("80", "90")


def _nvrtc():
    """``(cupy.cuda.nvrtc, cupy._core.core)``, or skip naming what is missing."""
    try:
        import cupy._core.core as core  # noqa: PLC0415
        from cupy.cuda import nvrtc  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a CuPy that fails to load
        pytest.skip(f"CuPy is not installed here ({type(exc).__name__}: {exc}); "
                    "pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12")
    try:
        nvrtc.getVersion()
    except Exception as exc:
        pytest.skip(f"NVRTC is not loadable here ({type(exc).__name__}: {exc}); "
                    "pip install nvidia-cuda-nvrtc-cu12")
    return nvrtc, core


def nvrtc_options(core, arch, user=ck.NVRTC_OPTIONS):
    """The options RawKernel's compile passes to NVRTC for ``arch``, without any CUDA include dir."""
    std = "--std=c++17"  # CuPy's default (c++14 before v14): taken from CuPy where it tells us
    try:
        full = core.assemble_cupy_compiler_options(tuple(user))
        std = next(o for o in full if o.startswith(("--std=", "-std=")))
    except RuntimeError:  # CuPy >= 14 refuses to assemble where it finds no CUDA headers (CI)
        full = None
    cupy_inc = core._get_header_dir_path()
    opts = core._get_cccl_include_options() + tuple(user) + (std, f"-I{cupy_inc}")
    if full is not None:  # the same list as CuPy's, less the CUDA include dir it adds
        assert tuple(o for o in full if not (o.startswith("-I") and not o.startswith(f"-I{cupy_inc}"))) == opts
    return opts + ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


def _compile(nvrtc, source, options, name="minilr.cu"):
    """Compile ``source``; return (cubin bytes, log) or raise AssertionError with NVRTC's log."""
    prog = nvrtc.createProgram(source, name, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise AssertionError(f"NVRTC {exc}:\n{nvrtc.getProgramLog(prog)}") from None
        return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def _no_cuda_include(options):
    cuda_dirs = [p for p in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda") if p]
    return not any(o.startswith("-I") and any(os.path.realpath(o[2:]).startswith(os.path.realpath(c))
                                              for c in cuda_dirs) for o in options)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_with_nvrtc_without_cuda_headers(arch):
    """Each kernel's own translation unit (what its RawKernel compiles) builds a cubin holding the
    kernel's entry, for sm_80 and sm_90, with no CUDA include dir: NVRTC's log has no warning, and
    ptxas (asked for its report, which changes no code) finds no spills and no shared memory."""
    nvrtc, core = _nvrtc()
    opts = nvrtc_options(core, arch)
    assert _no_cuda_include(opts) and "-ftz=true" in opts and "--fmad=false" in opts
    assert len(ck.KERNELS) >= 17  # every kernel the sites launch (none lost from the registry)
    for k in ck.KERNELS.values():
        assert "#include" not in k.source, k.name
        cubin, log = _compile(nvrtc, k.source, opts + ("--ptxas-options=-v",))
        assert k.name.encode() in cubin, (k.name, arch)
        assert "warning" not in log.lower(), (k.name, arch, log)
        assert f"Compiling entry function '{k.name}' for 'sm_{arch}'" in log, log
        assert "0 bytes spill stores, 0 bytes spill loads" in log, (k.name, arch, log)
        assert "smem" not in log, (k.name, arch, log)  # ptxas names shared memory only when used


def test_the_whole_source_compiles_and_a_broken_kernel_fails(monkeypatch):
    """``full_source()`` (every kernel in one unit) compiles; a kernel with a syntax error makes
    the compile, hence this test, fail with NVRTC's message naming the error."""
    nvrtc, core = _nvrtc()
    opts = nvrtc_options(core, ARCHS[0])
    cubin, _ = _compile(nvrtc, ck.full_source(), opts)
    assert all(name.encode() in cubin for name in ck.KERNELS)
    broken = ck.Kernel("broken", ck.LR_SCALE.params, ck.LR_SCALE.body.replace("w[t] = ", "w[t] = = "),
                       ck.LR_SCALE.twin)
    with pytest.raises(AssertionError, match="error"):
        _compile(nvrtc, broken.source, opts)
    # and through full_source(), as a broken kernel in KERNELS would be compiled above
    monkeypatch.setitem(ck.KERNELS, "lr_scale", broken)
    with pytest.raises(AssertionError, match="expected an expression"):
        _compile(nvrtc, ck.full_source(), opts)


def test_the_gpu_extra_brings_the_cuda_headers_cupy_needs():
    """minilr's kernels need no CUDA header (above), but CuPy itself refuses to compile any kernel
    where it finds none ("Failed to find CUDA headers", CuPy >= 13 with NVRTC >= 12.2), so the
    ``[gpu]`` extra asks for CuPy's ``[ctk]`` extra, which brings them (and cuBLAS) as wheels."""
    import configparser  # noqa: PLC0415

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), "..", "setup.cfg"))
    reqs = [r.strip() for r in cfg["options.extras_require"]["gpu"].split("\n") if r.strip()]
    assert any(r.startswith("cupy-cuda12x[ctk]") for r in reqs), reqs
