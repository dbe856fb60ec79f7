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

/// <summary>
/// QLoRA's base product, fused vs scratch, through <see cref="NativeLora.Model.Linear"/> itself (no adapter):
/// fused = the Nf4Matmul kernels reading the codes; scratch = dequantize into a pooled buffer + the native GEMM.
/// Forward y = x·Wᵀ and backward dx = dy·W. DenseGemm is the roofline of the product: the same GEMM with a weight
/// that is already dense (what scratch would cost without its dequantization). GFLOP/s = 2·N·in·out / mean time.
/// Shapes: CPU (f32) decode N=1 and N=512 on 1024×1024 and 2816×1024 (an MLP up-projection of hidden 1024);
/// CUDA (bf16) decode and 4096 tokens on Llama-3-8B's 4096×4096 and 14336×4096.
/// </summary>
[Config(typeof(Nf4MatmulConfig))]
public class Nf4MatmulBenchmarks
{
    private sealed class Nf4MatmulConfig : ManualConfig
    {
        public Nf4MatmulConfig()
        {
            AddJob(BenchJob.InProcess(warmups: 2, iterations: 6));
            AddColumn(new RateColumn("GFLOP/s", c => 2.0 * Dims.Parse((string)RateColumn.Params(c)["Shape"]).Macs));
        }
    }

    /// <summary>N rows × in features → out features, written "NxIN->OUT".</summary>
    public readonly record struct Dims(int N, int In, int Out)
    {
        public double Macs => (double)N * In * Out;
        public override string ToString() => $"{N}x{In}->{Out}";
        public static Dims Parse(string s)
        {
            var p = s.Split('x', 2);
            var q = p[1].Split("->");
            return new Dims(int.Parse(p[0]), int.Parse(q[0]), int.Parse(q[1]));
        }
    }

    public static IEnumerable<string> Shapes() => (NativeLora.Native.NativeCore.IsCuda
        ? new[] { new Dims(1, 4096, 4096), new Dims(1, 4096, 14336), new Dims(4096, 4096, 4096), new Dims(4096, 4096, 14336) }
        : new[] { new Dims(1, 1024, 1024), new Dims(1, 1024, 2816), new Dims(512, 1024, 1024), new Dims(512, 1024, 2816) })
        .Select(s => s.ToString());

    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = "";

    private ComputeDevice _dev = null!;
    private KernelSet _k = null!;
    private NativeLora.Model.Linear _fused = null!, _scratch = null!;
    private Tensor _x = null!, _y = null!, _dy = null!, _dx = null!, _dense = null!;

    [GlobalSetup]
    public void Setup()
    {
        var s = Dims.Parse(Shape);
        _dev = ComputeDevice.Open();
        _k = _dev.Kernels;
        var dtype = _dev.DefaultComputeDType;
        var rng = new Random(1);
        Tensor Random(int rows, int cols, float scale)
        {
            var t = _dev.Allocate(dtype, rows, cols);
            t.CopyFromFloats(Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() - 0.5) * scale).ToArray());
            return t;
        }
        _dense = Random(s.Out, s.In, 0.04f);
        var copy = _dev.Allocate(dtype, s.Out, s.In);
        _dense.CopyTo(copy);
        _fused = new NativeLora.Model.Linear("fused", copy, null) { BaseMatmul = QloraMatmul.Fused };
        _fused.Quantize(_k);
        copy = _dev.Allocate(dtype, s.Out, s.In);
        _dense.CopyTo(copy);
        _scratch = new NativeLora.Model.Linear("scratch", copy, null) { BaseMatmul = QloraMatmul.Scratch };
        _scratch.Quantize(_k);
        _x = Random(s.N, s.In, 2f);
        _dy = Random(s.N, s.Out, 2f);
        _y = _dev.Allocate(dtype, s.N, s.Out);
        _dx = _dev.Allocate(dtype, s.N, s.In);
        _dev.Synchronize();
    }

    [Benchmark] public void FusedForward() { _fused.Forward(_k, _x, _y); _dev.Synchronize(); }
    [Benchmark] public void ScratchForward() { _scratch.Forward(_k, _x, _y); _dev.Synchronize(); }
    [Benchmark] public void FusedBackward() { _fused.Backward(_k, _x, null, _dy, _dx, accumulate: false); _dev.Synchronize(); }
    [Benchmark] public void ScratchBackward() { _scratch.Backward(_k, _x, null, _dy, _dx, accumulate: false); _dev.Synchronize(); }
    [Benchmark] public void DenseGemm() { Gemm.Run(_x, _dense, _y, transB: true); _dev.Synchronize(); }

    [GlobalCleanup]
    public void Cleanup()
    {
        _fused.Quantized!.Dispose();
        _scratch.Quantized!.Dispose();
        foreach (var t in new[] { _x, _y, _dy, _dx, _dense }) t.Dispose();
        _dev.Dispose();
    }
}
