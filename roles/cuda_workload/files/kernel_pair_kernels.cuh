// The two small kernels of the kernel pair (seed 003). Shared by kernel_pair.cu (nvcc) and kernel_pair.py
// (CuPy compiles this text with NVRTC): one source for both. Each kernel is launched with few blocks on
// purpose: alone it leaves most SMs idle, which is the case MPS is made for.
extern "C" __global__ void gpulab_add(const float *a, const float *b, float *c, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        c[i] = a[i] + b[i];
}

extern "C" __global__ void gpulab_scale(const float *x, float *y, float s, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = s * x[i];
}
