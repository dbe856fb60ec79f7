using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using NativeLora.Devices;
using NativeLora.Tensors;

namespace NativeLora.Bench;

/// <summary>
/// The native GEMM (OpenBLAS or cuBLAS through the C ABI) against a plain C# triple loop on the
/// same square f32 problem. The ratio of the two rates is what bench/RESULTS.md records.
/// </summary>
[Config(typeof(GemmConfig))]
public class GemmBenchmarks
{
    private sealed class GemmConfig : ManualConfig
    {
        public GemmConfig()
        {
            AddJob(BenchJob.InProcess(warmups: 2, iterations: 8));
            AddColumn(new RateColumn("GFLOP/s", c => 2.0 * Math.Pow((int)RateColumn.Params(c)["N"], 3)));
        }
    }

    [Params(128, 512)]
    public int N;

    private ComputeDevice _device = null!;
    private Tensor _a = null!, _b = null!, _c = null!;
    private float[] _ha = null!, _hb = null!, _hc = null!;

    [GlobalSetup]
    public void Setup()
    {
        _device = ComputeDevice.Open();
        var rng = new Random(1);
        _ha = Enumerable.Range(0, N * N).Select(_ => (float)rng.NextDouble()).ToArray();
        _hb = Enumerable.Range(0, N * N).Select(_ => (float)rng.NextDouble()).ToArray();
        _hc = new float[N * N];
        _a = _device.Allocate(DType.F32, N, N);
        _b = _device.Allocate(DType.F32, N, N);
        _c = _device.Allocate(DType.F32, N, N);
        _a.CopyFrom<float>(_ha);
        _b.CopyFrom<float>(_hb);
    }

    [Benchmark(Description = "native GEMM f32")]
    public void NativeGemm()
    {
        Gemm.Run(_a, _b, _c);
        _device.Synchronize();
    }

    [Benchmark(Baseline = true, Description = "C# loop f32")]
    public void CSharpLoop()
    {
        int n = N;
        var a = _ha; var b = _hb; var c = _hc;
        Array.Clear(c);
        for (int i = 0; i < n; i++)
            for (int p = 0; p < n; p++)
            {
                float av = a[i * n + p];
                for (int j = 0; j < n; j++) c[i * n + j] += av * b[p * n + j];
            }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _a.Dispose(); _b.Dispose(); _c.Dispose();
        _device.Dispose();
    }
}
