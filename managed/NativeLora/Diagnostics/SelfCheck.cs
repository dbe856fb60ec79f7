using System.Diagnostics;
using NativeLora.Devices;
using NativeLora.Tensors;

namespace NativeLora.Diagnostics;

/// <summary>One line of a self-check: what ran, its relative error against float64, and its speed.</summary>
public readonly record struct SelfCheckResult(string Name, double RelativeError, double Tolerance, double GflopPerSecond)
{
    public bool Passed => RelativeError < Tolerance;
}

/// <summary>
/// A quick start-up check that the picked backend computes correctly: GEMMs in each float
/// dtype against a float64 product of the same (rounded) inputs. Used by `nativelora selfcheck`.
/// </summary>
public static class SelfCheck
{
    public static IReadOnlyList<SelfCheckResult> RunGemm(ComputeDevice device, int size = 256, int seed = 1234)
    {
        var results = new List<SelfCheckResult>();
        var rng = new Random(seed);
        foreach (var dtype in new[] { DType.F32, DType.BF16, DType.F16 })
        {
            int m = size, n = size + 1, k = size - 1;
            using var a = device.Allocate(dtype, m, k);
            using var b = device.Allocate(dtype, k, n);
            using var c = device.Allocate(dtype, m, n);
            a.CopyFromFloats(RandomFloats(rng, m * k));
            b.CopyFromFloats(RandomFloats(rng, k * n));
            c.Poison();
            var ah = a.ToFloatArray();
            var bh = b.ToFloatArray();
            Gemm.Run(a, b, c); // warm-up and result
            device.Synchronize();
            var sw = Stopwatch.StartNew();
            const int reps = 3;
            for (int r = 0; r < reps; r++) Gemm.Run(a, b, c);
            device.Synchronize();
            double gflops = 2.0 * m * n * k * reps / sw.Elapsed.TotalSeconds / 1e9;
            var product = new double[m * n];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                    for (int p = 0; p < k; p++) product[i * n + j] += (double)ah[i * k + p] * bh[p * n + j];
            double err = KernelCheck.RelativeError(c.ToFloatArray(), product);
            results.Add(new SelfCheckResult($"gemm {dtype.Name()} {m}x{n}x{k}", err, dtype == DType.F32 ? 1e-5 : 1e-2, gflops));
        }
        return results;
    }

    private static float[] RandomFloats(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
