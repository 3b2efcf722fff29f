"""A tiny CuTe kernel (doubles 32 floats) for compile tests that need any kernel at all."""
import cutlass.cute as cute


@cute.kernel
def _double(x: cute.Tensor):
    tidx, _, _ = cute.arch.thread_idx()
    x[tidx] = x[tidx] * 2.0


@cute.jit
def launch(x: cute.Tensor):
    _double(x).launch(grid=(1, 1, 1), block=(32, 1, 1))
