using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Quantization;
using NativeLora.Tensors;
using NativeLora.Tests.Support;
using Nf4MatmulReference = NativeLora.Kernels.Nf4Matmul.Reference;

namespace NativeLora.Tests.Kernels;

/// <summary>
/// The fused NF4 matmul (Kernels/Nf4Matmul.cs, Ops/Nf4MatmulOp.cs), GPU and CPU variants, against its float64 reference
/// (checked here against finite differences) with the weights the NF4 state stores (Nf4Tensor.ReferenceDequantize);
/// and a QLoRA layer with the fused base product against the same layer with the dequantize-then-GEMM scratch.
/// </summary>
public class Nf4MatmulTests
{
    // (rows, in, out): decode; odd in-features, so W rows start on either nibble and 64-blocks straddle rows;
    // many rows with in-features a multiple of neither the tile depth (32) nor the block (64)
    private static readonly (int N, int In, int Out)[] Shapes = { (1, 130, 33), (5, 75, 19), (300, 200, 70) };

    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var gpu in new[] { false, true })
            foreach (var dtype in new[] { DType.F32, DType.BF16, DType.F16 })
                foreach (var (n, inF, outF) in Shapes)
                    yield return new TestCaseData(gpu, dtype, n, inF, outF, dtype != DType.F16); // one non-nested form per variant
    }

    private static Nf4Tensor RandomState(Random rng, int outF, int inF, bool nested)
    {
        var w = Check.RandomFloats(rng, (long)outF * inF, 0.05);
        for (int i = 0; i < w.Length; i += 97) w[i] *= 6; // uneven absmax values, so double quantization has work to do
        using var tw = Ref.Upload(DType.F32, w, outF, inF);
        return Nf4Tensor.Quantize(TestDevice.Shared.Kernels, tw, doubleQuant: nested);
    }

    [TestCaseSource(nameof(Cases))]
    public void ForwardAndBackwardMatchFloat64(bool gpuVariant, DType dtype, int n, int inF, int outF, bool nested)
    {
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        using var state = RandomState(rng, outF, inF, nested);
        var w = state.ReferenceDequantize().Weights;
        var x = Ref.Random(rng, dtype, (long)n * inF);
        var dy = Ref.Random(rng, dtype, (long)n * outF);
        var prior = Ref.Random(rng, dtype, (long)n * inF);
        string what = $"{(gpuVariant ? "GPU" : "CPU")} variant {dtype} N={n} in={inF} out={outF} nested={nested}";
        double tol = Ref.Tolerance(dtype, 1e-5);

        using var tx = Ref.Upload(dtype, x, n, inF);
        using var ty = Ref.Poisoned(dtype, n, outF);
        Nf4MatmulOp.Forward(k, state, tx, ty);
        var (yRef, dxRef) = Nf4MatmulReference.Run(Ref.ToDouble(x), Ref.ToDouble(dy), w, n, inF, outF);
        Check.Close(ty.ToFloatArray(), yRef, tol, what + " y", seed);

        using var tdy = Ref.Upload(dtype, dy, n, outF);
        using (var tdx = Ref.Poisoned(dtype, n, inF))
        {
            Nf4MatmulOp.BackwardData(k, state, tdy, tdx, accumulate: false);
            Check.Close(tdx.ToFloatArray(), dxRef, tol, what + " dx", seed);
        }
        using (var tdx = Ref.Upload(dtype, prior, n, inF))
        {
            Nf4MatmulOp.BackwardData(k, state, tdy, tdx, accumulate: true);
            Check.Close(tdx.ToFloatArray(), dxRef.Select((v, i) => v + prior[i]).ToArray(), tol, what + " dx accumulated", seed);
        }
    }

    [Test]
    public void ReferenceMatchesFiniteDifferences()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 2, inF = 5, outF = 3;
        double[] R(int len) => Ref.ToDouble(Check.RandomFloats(rng, len));
        var x = R(n * inF); var w = R(outF * inF); var dy = R(n * outF);
        var dx = Nf4MatmulReference.Run(x, dy, w, n, inF, outF).Dx;
        var numeric = Ref.NumericGradient(v => Ref.Dot(Nf4MatmulReference.Run(v, dy, w, n, inF, outF).Y, dy), x);
        Assert.That(Check.RelativeError(Array.ConvertAll(dx, v => (float)v), numeric), Is.LessThan(1e-6), $"seed {seed}");
    }

    [Test]
    public void MismatchedShapesAreRejectedWithTheExpectedShape()
    {
        var k = TestDevice.Shared.Kernels;
        using var state = RandomState(new Random(1), 8, 64, nested: true);
        using var x = Ref.Poisoned(DType.F32, 3, 60);
        using var y = Ref.Poisoned(DType.F32, 3, 8);
        var e = Assert.Throws<ArgumentException>(() => Nf4MatmulOp.Forward(k, state, x, y));
        Assert.That(e!.Message, Does.Contain("x must be [N, 64]"));
        using var xb = Ref.Poisoned(DType.BF16, 3, 64);
        Assert.Throws<ArgumentException>(() => Nf4MatmulOp.Forward(k, state, xb, y));
    }

    // A QLoRA layer (LoRA with dropout and a bias on an NF4 base) computed with the fused base product and with the scratch.
    [Test]
    public void QloraLayerFusedMatchesScratch([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype)
    {
        var dev = TestDevice.Shared;
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 11, inF = 96, outF = 40, r = 4;
        var w0 = Ref.Random(rng, dtype, (long)outF * inF, 0.2);
        var bias = Ref.Random(rng, dtype, outF, 0.5);
        var a = Ref.Random(rng, dtype, r * inF, 0.5);
        var b = Ref.Random(rng, dtype, outF * r, 0.5);
        var x = Ref.Random(rng, dtype, n * inF);
        var dy = Ref.Random(rng, dtype, n * outF);

        (float[] Y, float[] Dx, float[] DA, float[] DB) Run(QloraMatmul mode)
        {
            using var m = new LoraModule(dev, "t", inF, outF, r, 2f, 0.1f, dtype) { Training = true, DropoutSeed = (ulong)seed };
            m.A.CopyFrom<float>(a);
            m.B.CopyFrom<float>(b);
            m.SyncCompute(k);
            m.ZeroGradients(k);
            var tw = Ref.Upload(dtype, w0, outF, inF); // freed by Quantize
            using var tb = Ref.Upload(dtype, bias, outF);
            var lin = new Linear("t", tw, tb) { Lora = m, BaseMatmul = mode };
            lin.Quantize(k);
            try
            {
                using var tx = Ref.Upload(dtype, x, n, inF);
                using var ty = Ref.Poisoned(dtype, n, outF);
                using var tdy = Ref.Upload(dtype, dy, n, outF);
                using var tdx = Ref.Poisoned(dtype, n, inF);
                using (var saved = lin.Forward(k, tx, ty)) lin.Backward(k, tx, saved, tdy, tdx, accumulate: false);
                return (ty.ToFloatArray(), tdx.ToFloatArray(), m.AGrad.ToArray<float>(), m.BGrad.ToArray<float>());
            }
            finally
            {
                lin.Quantized!.Dispose();
            }
        }
        var fused = Run(QloraMatmul.Fused);
        var scratch = Run(QloraMatmul.Scratch);
        // f32: the same f32 weights, summed in another order. bf16: the scratch also rounds W to bf16, the fused kernels keep f32.
        double tol = Ref.Tolerance(dtype, 1e-5);
        string what = $"{(gpuVariant ? "GPU" : "CPU")} variant {dtype}: fused vs scratch";
        Check.Close(fused.Y, Ref.ToDouble(scratch.Y), tol, what + " y", seed);
        Check.Close(fused.Dx, Ref.ToDouble(scratch.Dx), tol, what + " dx", seed);
        Check.Close(fused.DA, Ref.ToDouble(scratch.DA), tol, what + " dA", seed);
        Check.Close(fused.DB, Ref.ToDouble(scratch.DB), tol, what + " dB", seed);
    }

    [Test]
    public void DoraLayersNeedTheDenseWeight()
    {
        var dev = TestDevice.Shared;
        var k = dev.Kernels;
        int n = 2, inF = 64, outF = 8, r = 2;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        using var m = new LoraModule(dev, "t", inF, outF, r, 1f, 0f, DType.F32, dora: true);
        m.A.CopyFrom<float>(Check.RandomFloats(rng, r * inF));
        m.B.CopyFrom<float>(Check.RandomFloats(rng, outF * r));
        m.Magnitude!.CopyFrom<float>(Enumerable.Repeat(1f, outF).ToArray());
        m.SyncCompute(k);
        var lin = new Linear("t", Ref.Upload(DType.F32, Check.RandomFloats(rng, outF * inF), outF, inF), null) { Lora = m, BaseMatmul = QloraMatmul.Fused };
        lin.Quantize(k);
        using var x = Ref.Upload(DType.F32, Check.RandomFloats(rng, n * inF), n, inF);
        using var y = Ref.Poisoned(DType.F32, n, outF);
        var e = Assert.Throws<InvalidOperationException>(() => lin.Forward(k, x, y));
        Assert.That(e!.Message, Does.Contain("DoRA").And.Contain("scratch"));
        lin.BaseMatmul = QloraMatmul.Auto; // auto falls back to the scratch for DoRA
        using (lin.Forward(k, x, y)) { }
        using var scratch = Ref.Poisoned(DType.F32, n, outF);
        lin.BaseMatmul = QloraMatmul.Scratch;
        using (lin.Forward(k, x, scratch)) { }
        Assert.That(y.ToArray<float>(), Is.EqualTo(scratch.ToArray<float>()), $"auto is the scratch path for DoRA, bit for bit (seed {seed})");
        lin.Quantized!.Dispose();
    }
}
