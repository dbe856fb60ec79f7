using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Quantization;
using NativeLora.Tensors;

namespace NativeLora.Bench;

/// <summary>
/// NF4 with double quantization on one f32 weight (GPU: 4096×4096, CPU: 1024×1024). GB/s counts the f32 side
/// only (read once by Quantize, written once by Dequantize), so it compares directly with DeviceCopy's bandwidth.
/// Quantize includes the absmax mean's round trip to the host and the state's allocations.
/// </summary>
[Config(typeof(Nf4Config))]
public class Nf4Benchmarks
{
    private sealed class Nf4Config : ManualConfig
    {
        public Nf4Config()
        {
            AddJob(BenchJob.InProcess(warmups: 2, iterations: 6));
            AddColumn(new RateColumn("GB/s", c => c.Descriptor.WorkloadMethod.Name == nameof(DeviceCopy) ? 2.0 * 4 * Elements : 4.0 * Elements));
        }
    }

    private static int Dim => NativeLora.Native.NativeCore.IsCuda ? 4096 : 1024;
    private static long Elements => (long)Dim * Dim;

    private ComputeDevice _dev = null!;
    private KernelSet _k = null!;
    private Tensor _w = null!, _out = null!;
    private Nf4Tensor _state = null!;

    [GlobalSetup]
    public void Setup()
    {
        _dev = ComputeDevice.Open();
        _k = _dev.Kernels;
        var rng = new Random(1);
        _w = _dev.Allocate(DType.F32, Dim, Dim);
        _w.CopyFrom<float>(Enumerable.Range(0, (int)Elements).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.04f).ToArray());
        _out = _dev.Allocate(DType.F32, Dim, Dim);
        _state = Nf4Tensor.Quantize(_k, _w);
        _dev.Synchronize();
    }

    [Benchmark] public void DeviceCopy() { _w.CopyTo(_out); _dev.Synchronize(); }
    [Benchmark] public void Quantize() { using var s = Nf4Tensor.Quantize(_k, _w); _dev.Synchronize(); }
    [Benchmark] public void Dequantize() { _state.Dequantize(_k, _out); _dev.Synchronize(); }

    [GlobalCleanup]
    public void Cleanup()
    {
        _state.Dispose();
        _w.Dispose();
        _out.Dispose();
        _dev.Dispose();
    }
}
