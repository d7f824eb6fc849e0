// kernel_pair: one of the two small kernels of seed 003, in a process of its own. MPS shares the GPU between
// processes: start `kernel_pair --kernel add` and `kernel_pair --kernel scale` at once and the pair runs
// side by side under MPS (run_workloads.py does that, and checks that both are MPS clients).
//
//   nvcc -O2 -o kernel_pair kernel_pair.cu
//   kernel_pair --kernel add|scale [--n N] [--blocks B] [--threads T] [--iterations I] [--device D] [--handshake]
//
// Prints one line per iteration ("iteration 3: 0.123 ms") and, last, "RESULT {json}" (with the wall clock at the
// start and the end of the timed launches: started_at, ended_at). With --handshake it
// prints "READY <pid>" once its CUDA context exists, then waits for a line on stdin before the first launch,
// so that a runner can prove it is an MPS client before it works. Every CUDA call is checked; the output is
// poisoned (all bits set: NaN) before each launch and every element is compared with the host's result.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <time.h>
#include <unistd.h>
#include <cuda_runtime.h>

#include "kernel_pair_kernels.cuh"

static void fail(const char *what, cudaError_t err)
{
    printf("RESULT {\"workload\": \"kernel_pair\", \"pid\": %d, \"check\": \"error\", \"error\": \"%s: %s\"}\n",
           (int)getpid(), what, cudaGetErrorString(err));
    fflush(stdout);
    exit(2);
}

#define CHECK(call)                          \
    do {                                     \
        cudaError_t err_ = (call);           \
        if (err_ != cudaSuccess)             \
            fail(#call, err_);               \
    } while (0)

static long long arg_value(int argc, char **argv, const char *name, long long fallback)
{
    for (int i = 1; i + 1 < argc; ++i)
        if (strcmp(argv[i], name) == 0)
            return atoll(argv[i + 1]);
    return fallback;
}

// The wall clock (seconds since the epoch), shared by the workers of one host: the runner's aggregate of workers side
// by side is measured from the first one's start to the last one's end.
static double wall_seconds()
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

static bool has_flag(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; ++i)
        if (strcmp(argv[i], name) == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    std::string kernel = "add";
    for (int i = 1; i + 1 < argc; ++i)
        if (strcmp(argv[i], "--kernel") == 0)
            kernel = argv[i + 1];
    if (kernel != "add" && kernel != "scale") {
        fprintf(stderr, "usage: %s --kernel add|scale [--n N] [--blocks B] [--threads T] [--iterations I] "
                        "[--device D] [--handshake]\n", argv[0]);
        return 64;
    }
    const long long n = arg_value(argc, argv, "--n", 1LL << 24);
    const int blocks = (int)arg_value(argc, argv, "--blocks", 4);
    const int threads = (int)arg_value(argc, argv, "--threads", 256);
    const int iterations = (int)arg_value(argc, argv, "--iterations", 10);
    const int device = (int)arg_value(argc, argv, "--device", 0);
    const float s = 3.0f;
    if (n <= 0 || blocks <= 0 || threads <= 0 || threads > 1024 || iterations <= 0) {
        fprintf(stderr, "n, blocks, iterations must be positive and threads in 1..1024\n");
        return 64;
    }

    CHECK(cudaSetDevice(device));
    CHECK(cudaFree(0));  // creates the context: from here on an MPS client shows in the daemon's ps
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, device));

    std::vector<float> a(n), b(n), out(n);
    for (long long i = 0; i < n; ++i) {
        a[i] = (float)(i % 1000) * 0.001f + 0.5f;
        b[i] = 1.0f + (float)(i % 7);
    }
    float *da = nullptr, *db = nullptr, *dc = nullptr;
    const size_t bytes = (size_t)n * sizeof(float);
    CHECK(cudaMalloc(&da, bytes));
    CHECK(cudaMalloc(&db, bytes));
    CHECK(cudaMalloc(&dc, bytes));
    CHECK(cudaMemcpy(da, a.data(), bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), bytes, cudaMemcpyHostToDevice));
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));

    if (has_flag(argc, argv, "--handshake")) {
        printf("READY %d\n", (int)getpid());
        fflush(stdout);
        char line[64];
        if (!fgets(line, sizeof line, stdin))
            return 0;  // the runner is gone: do not run unobserved
    }

    std::vector<float> ms(iterations);
    const double started = wall_seconds();
    for (int it = 0; it < iterations; ++it) {
        CHECK(cudaMemset(dc, 0xff, bytes));  // all bits set is a NaN: an element the kernel skips shows
        CHECK(cudaEventRecord(start));
        if (kernel == "add")
            gpulab_add<<<blocks, threads>>>(da, db, dc, n);
        else
            gpulab_scale<<<blocks, threads>>>(da, dc, s, n);
        CHECK(cudaGetLastError());
        CHECK(cudaEventRecord(stop));
        CHECK(cudaEventSynchronize(stop));
        CHECK(cudaEventElapsedTime(&ms[it], start, stop));
        printf("iteration %d: %.3f ms\n", it, ms[it]);
        fflush(stdout);
    }
    const double ended = wall_seconds();
    CHECK(cudaMemcpy(out.data(), dc, bytes, cudaMemcpyDeviceToHost));
    long long wrong = 0;
    for (long long i = 0; i < n; ++i) {
        const float want = kernel == "add" ? a[i] + b[i] : s * a[i];
        if (!(out[i] == want))
            ++wrong;
    }
    printf("RESULT {\"workload\": \"kernel_pair\", \"kernel\": \"%s\", \"pid\": %d, \"implementation\": \"cuda-c\", "
           "\"device\": \"%s\", \"sm_count\": %d, \"blocks\": %d, \"threads\": %d, \"n\": %lld, \"ms\": [",
           kernel.c_str(), (int)getpid(), prop.name, prop.multiProcessorCount, blocks, threads, n);
    for (int it = 0; it < iterations; ++it)
        printf("%s%.4f", it ? ", " : "", ms[it]);
    printf("], \"started_at\": %.6f, \"ended_at\": %.6f, \"wrong_elements\": %lld, \"check\": \"%s\"}\n",
           started, ended, wrong, wrong ? "wrong results" : "ok");
    fflush(stdout);
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    return wrong ? 1 : 0;
}
