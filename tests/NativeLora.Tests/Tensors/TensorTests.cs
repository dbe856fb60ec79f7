using ILGPU;
using ILGPU.Runtime;
using NativeLora.Kernels;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Tensors;

public class TensorTests
{
    [Test]
    public void HostRoundTripEveryDType()
    {
        var d = TestDevice.Shared;
        using (var t = d.Allocate(DType.F32, 2, 3)) { t.CopyFrom<float>(new[] { 1f, 2, 3, 4, 5, 6 }); Assert.That(t.ToArray<float>(), Is.EqualTo(new[] { 1f, 2, 3, 4, 5, 6 })); }
        using (var t = d.Allocate(DType.I32, 3)) { t.CopyFrom<int>(new[] { -1, 0, int.MaxValue }); Assert.That(t.ToArray<int>(), Is.EqualTo(new[] { -1, 0, int.MaxValue })); }
        using (var t = d.Allocate(DType.I64, 2)) { t.CopyFrom<long>(new[] { long.MinValue, 7L }); Assert.That(t.ToArray<long>(), Is.EqualTo(new[] { long.MinValue, 7L })); }
        using (var t = d.Allocate(DType.U8, 4)) { t.CopyFrom<byte>(new byte[] { 0, 15, 240, 255 }); Assert.That(t.ToArray<byte>(), Is.EqualTo(new byte[] { 0, 15, 240, 255 })); }
        // bf16/f16: values exactly representable round-trip exactly
        foreach (var dt in new[] { DType.BF16, DType.F16 })
        {
            using var t = d.Allocate(dt, 4);
            t.CopyFromFloats(new[] { 1f, -2.5f, 0.125f, 0f });
            Assert.That(t.ToFloatArray(), Is.EqualTo(new[] { 1f, -2.5f, 0.125f, 0f }), dt.Name());
        }
    }

    [Test]
    public void ViewsShareStorageAndCheckBounds()
    {
        var d = TestDevice.Shared;
        using var t = d.Allocate(DType.F32, 4, 3);
        t.CopyFrom<float>(Enumerable.Range(0, 12).Select(i => (float)i).ToArray());
        var rows = t.Slice(1, 2);
        Assert.That(rows.Shape, Is.EqualTo(new[] { 2, 3 }));
        Assert.That(rows.ToArray<float>(), Is.EqualTo(new[] { 3f, 4, 5, 6, 7, 8 }));
        var flat = t.Reshape(-1);
        Assert.That(flat.Shape, Is.EqualTo(new[] { 12 }));
        rows.CopyFrom<float>(new float[6]);
        Assert.That(t.ToArray<float>()[3..9], Is.All.EqualTo(0f));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Slice(3, 2));
        Assert.Throws<ArgumentException>(() => t.Reshape(5, 3));
        Assert.Throws<InvalidOperationException>(() => t.View<ushort>());
        Assert.That(t.Strides, Is.EqualTo(new long[] { 3, 1 }));
    }

    [Test]
    public void PoisonMakesEveryFloatElementNaN([Values(DType.F32, DType.BF16, DType.F16)] DType dt)
    {
        using var t = TestDevice.Shared.Allocate(dt, 17);
        t.Poison();
        Assert.That(t.ToFloatArray(), Is.All.NaN);
    }

    private static void Scale(Index1D i, ArrayView<float> data, float factor) => data[i] *= factor;

    [Test]
    public void PagedMemoryFromTheNativeCoreIsUsableByIlgpuKernels()
    {
        // The seam issue 6's paged optimizers stand on: memory allocated by nl_managed_alloc,
        // wrapped as an ILGPU buffer, read and written by a kernel in place.
        var d = TestDevice.Shared;
        using var paged = d.AllocatePaged(DType.F32, 1000);
        Assert.That(paged.ToArray<float>(), Is.All.EqualTo(0f), "paged memory starts zeroed");
        var data = Enumerable.Range(0, 1000).Select(i => (float)i).ToArray();
        paged.CopyFrom<float>(data);
        var kernel = d.Accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(Scale);
        kernel((int)paged.ElementCount, paged.View<float>(), 2f);
        d.Synchronize();
        Assert.That(paged.ToArray<float>(), Is.EqualTo(data.Select(x => 2 * x).ToArray()));
        // and the native core can GEMM on it
        using var id = d.Allocate(DType.F32, 10, 10);
        var eye = new float[100];
        for (int i = 0; i < 10; i++) eye[i * 11] = 1;
        id.CopyFrom<float>(eye);
        using var outp = d.Allocate(DType.F32, 100, 10);
        Gemm.Run(paged.Reshape(100, 10), id, outp);
        Assert.That(outp.ToArray<float>(), Is.EqualTo(data.Select(x => 2 * x).ToArray()));
    }

    // both variants (ILGPU kernel, host SIMD) against the scalar FloatBits conversions, bit for bit; lengths cover the vector tails
    [Test]
    public void CastsMatchHostConversions([Values(false, true)] bool gpuVariant, [Values(DType.BF16, DType.F16)] DType narrow, [Values(7, 1025)] int length)
    {
        var d = TestDevice.Shared;
        var k = TestDevice.Variant(gpuVariant);
        int seed = Check.FreshSeed();
        var src = Check.RandomFloats(new Random(seed), length, 1000);
        src[0] = float.NaN; src[1] = float.PositiveInfinity; src[2] = 1e-7f; src[3] = 70000f;
        if (length > 8) { src[4] = -0f; src[5] = 6e-8f; src[6] = 65519f; src[7] = BitConverter.Int32BitsToSingle(0x3f808000); } // f16 subnormal, round to max, a bf16 tie
        using var f = d.Allocate(DType.F32, src.Length);
        using var h = d.Allocate(narrow, src.Length);
        using var back = d.Allocate(DType.F32, src.Length);
        f.CopyFrom<float>(src);
        h.Poison();
        back.Poison();
        ElementwiseOp.Cast(k, f, h);
        ElementwiseOp.Cast(k, h, back);
        var bits = h.ToArray<ushort>();
        var wide = back.ToArray<float>();
        for (int i = 0; i < src.Length; i++)
        {
            ushort expect = narrow == DType.BF16 ? FloatBits.FloatToBf16(src[i]) : FloatBits.FloatToHalf(src[i]);
            float expectWide = narrow == DType.BF16 ? FloatBits.Bf16ToFloat(expect) : FloatBits.HalfToFloat(expect);
            string what = $"{(gpuVariant ? "gpu" : "cpu")} variant, {narrow.Name()} element {i} ({src[i]}), seed {seed}";
            if (float.IsNaN(src[i]))
            {
                Assert.That(float.IsNaN(wide[i]), Is.True, what); // NaN payloads may differ; NaN stays NaN
                continue;
            }
            Assert.That(bits[i], Is.EqualTo(expect), what);
            Assert.That(BitConverter.SingleToInt32Bits(wide[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expectWide)), what + " (widened back)");
        }
    }
}
