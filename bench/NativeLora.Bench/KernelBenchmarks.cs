using System.Reflection;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Running;
using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Bench;

/// <summary>
/// One benchmark per kernel family at a realistic size for the device (GPU: 8×512 tokens, hidden
/// 2048; CPU: 4×128 tokens, hidden 256), f32. Memory-bound kernels report GB/s (bytes they must
/// read and write, once each), attention reports GFLOP/s (4·B·H·T²·hd forward, causal half counted
/// as the full square: the same convention as FlashAttention's papers). The rooflines measured in
/// the same run are the device copy bandwidth (DeviceCopy) and the native GEMM (GemmPeak).
/// </summary>
[Config(typeof(KernelConfig))]
public class KernelBenchmarks
{
    private sealed class KernelConfig : ManualConfig
    {
        public KernelConfig()
        {
            AddJob(BenchJob.InProcess(warmups: 2, iterations: 6));
            AddColumn(new RateColumn("GB/s", c => Bytes(c)));
            AddColumn(new RateColumn("GFLOP/s", c => Flops(c)));
        }
    }

    private static readonly Sizes Cpu = new(4, 128, 256, 688, 8, 4, 2048);
    private static readonly Sizes Gpu = new(8, 512, 2048, 5632, 16, 4, 32000);

    private sealed record Sizes(int Batch, int Seq, int Hidden, int Inter, int Heads, int KvHeads, int Vocab)
    {
        public int N => Batch * Seq;
        public int HeadDim => Hidden / Heads;
    }

    private static Sizes Current => NativeLora.Native.NativeCore.IsCuda ? Gpu : Cpu;

    // bytes moved per call, per benchmark (f32 = 4 bytes)
    private static double Bytes(BenchmarkCase c)
    {
        var s = Current;
        double nd = (double)s.N * s.Hidden * 4, ni = (double)s.N * s.Inter * 4;
        return c.Descriptor.WorkloadMethod.Name switch
        {
            nameof(DeviceCopy) => 2 * nd,
            nameof(RmsNormForward) => 2 * nd,
            nameof(RmsNormBackward) => 3 * nd,
            nameof(RopeForward) => 2 * nd,
            nameof(SwiGluForward) => 3 * ni,
            nameof(SwiGluBackward) => 5 * ni,
            nameof(EmbeddingForward) => 2 * nd,
            nameof(CastToBf16) => nd * 1.5,
            _ => double.NaN,
        };
    }

    private static double Flops(BenchmarkCase c)
    {
        var s = Current;
        double attn = 4.0 * s.Batch * s.Heads * s.Seq * (double)s.Seq * s.HeadDim;
        return c.Descriptor.WorkloadMethod.Name switch
        {
            nameof(AttentionForward) => attn,
            nameof(AttentionBackward) => 2.5 * attn,
            nameof(GemmPeak) => 2.0 * s.N * s.Hidden * (double)s.Inter,
            nameof(CrossEntropyFused) => 2 * 2.0 * s.N * s.Hidden * (double)s.Vocab,
            _ => double.NaN,
        };
    }

    private ComputeDevice _dev = null!;
    private KernelSet _k = null!;
    private Tensor _x = null!, _y = null!, _w = null!, _rstd = null!, _dx = null!, _bf = null!;
    private Tensor _g = null!, _u = null!, _h = null!, _dg = null!, _du = null!, _ids = null!, _emb = null!, _pos = null!, _cos = null!, _sin = null!;
    private Tensor _q = null!, _kk = null!, _v = null!, _o = null!, _lse = null!, _seg = null!, _dq = null!, _dkk = null!, _dv = null!;
    private Tensor _a = null!, _b = null!, _c = null!, _lm = null!, _dh = null!;
    private int[] _hostIds = null!, _labels = null!;
    private AttentionShape _shape;

    [GlobalSetup]
    public void Setup()
    {
        _dev = ComputeDevice.Open();
        _k = _dev.Kernels;
        var s = Current;
        var rng = new Random(1);
        Tensor R(params int[] shape)
        {
            var t = _dev.Allocate(DType.F32, shape);
            t.CopyFrom<float>(Enumerable.Range(0, (int)t.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray());
            return t;
        }
        _x = R(s.N, s.Hidden); _y = R(s.N, s.Hidden); _dx = R(s.N, s.Hidden); _w = R(s.Hidden);
        _rstd = _dev.Allocate(DType.F32, s.N);
        _bf = _dev.Allocate(DType.BF16, s.N, s.Hidden);
        _g = R(s.N, s.Inter); _u = R(s.N, s.Inter); _h = R(s.N, s.Inter); _dg = R(s.N, s.Inter); _du = R(s.N, s.Inter);
        _hostIds = Enumerable.Range(0, s.N).Select(_ => rng.Next(s.Vocab)).ToArray();
        _ids = _dev.Allocate(DType.I32, s.N); _ids.CopyFrom<int>(_hostIds);
        _emb = R(s.Vocab, s.Hidden);
        var (cos, sin) = Rope.BuildTable(s.HeadDim, s.Seq, 10000, RopeScaling.None);
        _cos = _dev.Allocate(DType.F32, s.Seq, s.HeadDim / 2); _cos.CopyFrom<float>(cos);
        _sin = _dev.Allocate(DType.F32, s.Seq, s.HeadDim / 2); _sin.CopyFrom<float>(sin);
        _pos = _dev.Allocate(DType.I32, s.N); _pos.CopyFrom<int>(Enumerable.Range(0, s.N).Select(i => i % s.Seq).ToArray());
        _shape = new AttentionShape(s.Batch, s.Seq, s.Heads, s.KvHeads, s.HeadDim);
        _q = R(s.N, s.Hidden); _kk = R(s.N, s.KvHeads * s.HeadDim); _v = R(s.N, s.KvHeads * s.HeadDim);
        _o = _dev.Allocate(DType.F32, s.N, s.Hidden); _lse = _dev.Allocate(DType.F32, s.Batch * s.Heads * s.Seq);
        _dq = _dev.Allocate(DType.F32, s.N, s.Hidden); _dkk = _dev.Allocate(DType.F32, s.N, s.KvHeads * s.HeadDim); _dv = _dev.Allocate(DType.F32, s.N, s.KvHeads * s.HeadDim);
        _seg = _dev.Allocate(DType.I32, s.N); _seg.CopyFrom<int>(new int[s.N]);
        AttentionOp.Forward(_k, _q, _kk, _v, _seg, _o, _lse, _shape);
        _a = R(s.N, s.Hidden); _b = R(s.Inter, s.Hidden); _c = _dev.Allocate(DType.F32, s.N, s.Inter);
        _lm = R(s.Vocab, s.Hidden); _dh = _dev.Allocate(DType.F32, s.N, s.Hidden);
        _labels = Enumerable.Range(0, s.N).Select(_ => rng.Next(s.Vocab)).ToArray();
        _dev.Synchronize();
    }

    private void Sync() => _dev.Synchronize();

    [Benchmark] public void DeviceCopy() { _x.CopyTo(_y); Sync(); }
    [Benchmark] public void ZeroFill() { ElementwiseOp.Zero(_k, _y); Sync(); }
    [Benchmark] public void GemmPeak() { Gemm.Run(_a, _b, _c, transB: true); Sync(); }
    [Benchmark] public void RmsNormForward() { RmsNormOp.Forward(_k, _x, _w, _y, _rstd, 1e-5f); Sync(); }
    [Benchmark] public void RmsNormBackward() { RmsNormOp.Backward(_k, _x, _w, _y, _rstd, _dx, null); Sync(); }
    [Benchmark] public void RopeForward() { RopeOp.Forward(_k, new(_x, _y, Current.Heads), null, _pos, _cos, _sin, Current.HeadDim); Sync(); }
    [Benchmark] public void SwiGluForward() { SwiGluOp.Forward(_k, _g, _u, _h); Sync(); }
    [Benchmark] public void SwiGluBackward() { SwiGluOp.Backward(_k, _g, _u, _h, _dg, _du); Sync(); }
    [Benchmark] public void EmbeddingForward() { EmbeddingOp.Forward(_k, _ids, _hostIds, _emb, _y); Sync(); }
    [Benchmark] public void CastToBf16() { ElementwiseOp.Cast(_k, _x, _bf); Sync(); }
    [Benchmark] public void AttentionForward() { AttentionOp.Forward(_k, _q, _kk, _v, _seg, _o, _lse, _shape); Sync(); }
    [Benchmark] public void AttentionBackward() { AttentionOp.Backward(_k, _q, _kk, _v, _seg, _o, _lse, _o, _dq, _dkk, _dv, _shape); Sync(); }
    [Benchmark] public void CrossEntropyFused() { CrossEntropyOp.ForwardBackward(_k, _x, _lm, _labels, _dh, null, 256); Sync(); }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var f in GetType().GetFields(BindingFlags.NonPublic | BindingFlags.Instance))
            if (f.GetValue(this) is Tensor t) t.Dispose();
        _dev.Dispose();
    }
}
