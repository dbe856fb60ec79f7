using System.Globalization;
using System.Text;
using System.Text.Json;
using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Quantization;

/// <summary>
/// NF4 with double quantization (Kernels/Nf4.cs, Quantization/Nf4Tensor.cs) against hand-computed bytes, a plain
/// float64 quantizer, the format's formulas, and plain absmax int4 on Gaussian and real (stories260K) weights.
/// </summary>
public class Nf4Tests
{
    private static KernelSet K => TestDevice.Shared.Kernels;

    // The NF4 table as DESIGN.md lists it (bitsandbytes get_4bit_type), index = code.
    private static readonly double[] DesignCodes =
    {
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
        -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    };

    private static float[] Gaussian(Random rng, long n, double sigma)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    private static Dictionary<string, HostArray> Dict(params (string Key, HostArray Value)[] items) => items.ToDictionary(i => i.Key, i => i.Value);
    private static HostArray Bytes(byte[] b, params long[] shape) => new(SafeTensorsDType.U8, shape, b);
    private static HostArray Json(string s) { var b = Encoding.UTF8.GetBytes(s); return Bytes(b, b.Length); }

    // ---- the format's constants ----

    [Test]
    public void CodeTableAndThresholdsFollowTheFormat()
    {
        Assert.That(Nf4.Code.Select(c => (double)c), Is.EqualTo(DesignCodes));
        // each threshold is Python's repr of the float64 midpoint read as a float literal (bitsandbytes' constants)
        for (int i = 0; i < 15; i++)
        {
            double mid = (DesignCodes[i] + DesignCodes[i + 1]) / 2;
            float expected = float.Parse(mid.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
            Assert.That(Nf4.Thresholds[i], Is.EqualTo(expected), $"threshold {i}");
            Assert.That(Math.Abs(Nf4.Thresholds[i] - mid), Is.LessThanOrEqualTo(Math.Abs(mid) * 6e-8 + 1e-12), $"threshold {i} is a rounded midpoint");
        }
    }

    [Test]
    public void SignedDynamicMapFollowsTheFormula()
    {
        var map = Nf4.SignedDynamicMap();
        Assert.That(map, Has.Length.EqualTo(256));
        for (int i = 1; i < 256; i++) Assert.That(map[i], Is.GreaterThan(map[i - 1]), $"map sorted at {i}");
        Assert.That(map[127], Is.EqualTo(0f));
        Assert.That(map[255], Is.EqualTo(1f));
        for (int i = 0; i < 127; i++) Assert.That(map[i], Is.EqualTo(-map[254 - i]), $"symmetric at {i}");
        // create_dynamic_map(signed=True): for i in 0..6 the 2^i means of linspace(0.1, 1, 2^i+1), times 10^(i-6), in float64
        var formula = new List<double>();
        for (int i = 0; i < 7; i++)
            for (int k = 0; k < 1 << i; k++)
                formula.Add(Math.Pow(10, i - 6) * (0.1 + 0.9 * (k + 0.5) / (1 << i)));
        formula.Sort();
        for (int j = 0; j < 127; j++)
            Assert.That(map[128 + j], Is.EqualTo(formula[j]).Within(formula[j] * 2.5e-7), $"positive entry {j}");
        // exactly representable entries come out exact: 31/256, 229/256, 247/256, and 0.1·(0.1 + 0.028125·14.5) = 13/256
        Assert.That(map, Does.Contain(0.12109375f).And.Contain(0.89453125f).And.Contain(0.96484375f).And.Contain(0.05078125f));
        // entries where torch's SIMD paths disagree, as torch 1.13.1 printed them with ATEN_CPU_CAPABILITY=avx2
        // (the default path gives 0.44453120…, 0.48671871…, 0.51484370…; AVX-512 gives 0.44453123…)
        Assert.That((double)map[215], Is.EqualTo(0.44453126192092896));
        Assert.That((double)map[218], Is.EqualTo(0.4867187738418579));
        Assert.That((double)map[220], Is.EqualTo(0.514843761920929));
        Assert.That((double)map[1], Is.EqualTo(-0.9789062142372131));
    }

    // ---- (a) layout ----

    // Two blocks of 64 values at exact code points: block 0 scaled by 2, block 1 by 0.5.
    private static float[] LayoutValues()
    {
        var v = new float[128];
        v[0] = 2f; v[1] = -2f; v[2] = 0f; v[3] = 2f * (float)DesignCodes[8];
        for (int k = 0; k < 60; k++) v[4 + k] = 2f * (float)DesignCodes[k % 16];
        for (int k = 0; k < 64; k++) v[64 + k] = 0.5f * (float)DesignCodes[15 - k % 16];
        return v;
    }

    // Codes 15,0 | 7,8 | 0,1 | 2,3 | … then 15,14 | 13,12 | …: the even element in the high nibble.
    private static readonly byte[] LayoutBytes =
    {
        0xF0, 0x78, 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB,
        0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB,
        0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
        0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
    };

    [Test]
    public void LayoutFixtureQuantizesToHandComputedBytesAndBack()
    {
        var values = LayoutValues();
        var quantMap = HostArray.Floats(DesignCodes.Select(c => (float)c).ToArray());
        var dict = Dict(("weight", Bytes(LayoutBytes, 64, 1)), ("weight.absmax", HostArray.Floats(new[] { 2f, 0.5f })), ("weight.quant_map", quantMap),
            ("weight.quant_state.bitsandbytes__nf4", Json("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2, 64]}")));
        using (var state = Nf4Tensor.FromStateDict(TestDevice.Shared, dict))
        using (var output = Ref.Poisoned(DType.F32, 2, 64))
        {
            state.Dequantize(K, output);
            Assert.That(output.ToArray<float>(), Is.EqualTo(values), "hand-written bytes dequantize to the code points");
        }

        using (var w = Ref.Upload(DType.F32, values, 2, 64))
        using (var state = Nf4Tensor.Quantize(K, w, doubleQuant: false))
        {
            Assert.That(state.Packed.ToArray<byte>(), Is.EqualTo(LayoutBytes), "packed bytes");
            Assert.That(state.Absmax.ToArray<float>(), Is.EqualTo(new[] { 2f, 0.5f }), "absmax");
        }

        // nested: absmax' = map[q]·scale + offset; map[255] = 1 and map[127] = 0 give 0.75 + 1.25 = 2 and 1.25
        var nested = Dict(("weight", Bytes(LayoutBytes, 64, 1)), ("weight.absmax", Bytes(new byte[] { 255, 127 }, 2)), ("weight.quant_map", quantMap),
            ("weight.nested_absmax", HostArray.Floats(new[] { 0.75f })), ("weight.nested_quant_map", HostArray.Floats(Nf4.SignedDynamicMap())),
            ("weight.quant_state.bitsandbytes__nf4", Json("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2, 64], " +
                                                          "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 1.25}")));
        using (var state = Nf4Tensor.FromStateDict(TestDevice.Shared, nested))
        using (var output = Ref.Poisoned(DType.F32, 2, 64))
        using (var absmax = Ref.Poisoned(DType.F32, 2))
        {
            state.DequantizeAbsmax(K, absmax);
            Assert.That(absmax.ToArray<float>(), Is.EqualTo(new[] { 2f, 1.25f }));
            state.Dequantize(K, output);
            var expected = values.Select((v, i) => i < 64 ? v : 1.25f * (float)DesignCodes[15 - (i - 64) % 16]).ToArray();
            Assert.That(output.ToArray<float>(), Is.EqualTo(expected));
        }
    }

    [Test]
    public void GpuWordKernelDequantizesBitExactlyLikeTheByteKernel([Values(DType.BF16, DType.F16)] DType output, [Values(true, false)] bool nested,
        [Values(64 * 300, 64 * 37 + 8, 64 * 5 + 3)] int n)
    {
        int seed = Check.FreshSeed();
        var data = Ref.Random(new Random(seed), DType.F32, n, 3);
        using var w = Ref.Upload(DType.F32, data, n);
        using var state = Nf4Tensor.Quantize(K, w, doubleQuant: nested);
        using var viaBytes = Ref.Poisoned(output, n);
        using var viaWords = Ref.Poisoned(output, n);
        state.Dequantize(TestDevice.Variant(false), viaBytes);
        state.Dequantize(TestDevice.Variant(true), viaWords); // n % 8 != 0 falls back to the byte kernel
        Assert.That(viaWords.ToArray<ushort>(), Is.EqualTo(viaBytes.ToArray<ushort>()), $"{output}, nested {nested}, n {n}; seed {seed}");
    }

    [Test]
    public void TiesFollowBitsandbytes()
    {
        // NF4: absmax 1 makes x = v. A value equal to a threshold takes the lower code, the next float up the upper one.
        var v = new float[64];
        v[0] = 1f;
        for (int i = 0; i < 15; i++) { v[2 + 2 * i] = Nf4.Thresholds[i]; v[3 + 2 * i] = MathF.BitIncrement(Nf4.Thresholds[i]); }
        using (var w = Ref.Upload(DType.F32, v, 64))
        using (var state = Nf4Tensor.Quantize(K, w, doubleQuant: false))
        {
            var packed = state.Packed.ToArray<byte>();
            for (int i = 0; i < 15; i++)
            {
                Assert.That(Nf4.Reference.Nibble(packed, 2 + 2 * i), Is.EqualTo(i), $"x == threshold {i}");
                Assert.That(Nf4.Reference.Nibble(packed, 3 + 2 * i), Is.EqualTo(i + 1), $"x just above threshold {i}");
            }
        }

        // dynamic map: with offset 0 and a block maximum of 1, x = a. Exact midpoints take the even index.
        var map = Nf4.SignedDynamicMap();
        int[] ks = { 0, 1, 2, 100, 126, 127, 128, 200, 253, 254 };
        var a = new List<float> { 1f };
        var expected = new List<int> { 255 };
        foreach (int k in ks)
        {
            a.Add((map[k] + map[k + 1]) * 0.5f); expected.Add(k % 2 == 0 ? k : k + 1);
            a.Add(map[k]); expected.Add(k);
        }
        a.Add(-1f); expected.Add(0); // below the map's lowest entry (−0.99297)
        using var ta = Ref.Upload(DType.F32, a.ToArray(), a.Count);
        using var tmap = Ref.Upload(DType.F32, map, 256);
        using var q = Ref.Poisoned(DType.U8, a.Count);
        using var scale = Ref.Poisoned(DType.F32, 1);
        Nf4.QuantizeAbsmax(K, ta.View<float>(), tmap.View<float>(), 0f, q.View<byte>(), scale.View<float>(), 256);
        Assert.That(scale.ToArray<float>()[0], Is.EqualTo(1f));
        Assert.That(q.ToArray<byte>().Select(b => (int)b), Is.EqualTo(expected));
    }

    // ---- (b, f) quantize → dequantize against a float64 reference ----

    // A float tie: x within float rounding of a midpoint, where f32 arithmetic may pick either neighbour.
    private static bool NearMidpoint(double x, double[] table)
    {
        for (int c = 0; c + 1 < table.Length; c++)
        {
            double mid = (table[c] + table[c + 1]) / 2;
            if (Math.Abs(x - mid) <= 3e-7 * Math.Max(Math.Abs(mid), 1e-3)) return true;
        }
        return false;
    }

    [Test]
    public void QuantizeDequantizeMatchesFloat64Reference([Values(DType.F32, DType.BF16, DType.F16)] DType input, [Values(1, 129, 64 * 37 + 11)] int n)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var v = Gaussian(rng, n, 0.02);
        for (int i = 0; i < n; i++) v[i] = input.Round(v[i]);
        if (n > 100) { v[64] = 0f; for (int i = 65; i < 128; i++) v[i] = 0f; } // an all-zero block
        using var w = Ref.Upload(input, v, n);
        using var state = Nf4Tensor.Quantize(K, w, doubleQuant: false);
        var packed = state.Packed.ToArray<byte>();
        var absmax = state.Absmax.ToArray<float>();
        var (refAbsmax, refCodes) = Nf4.Reference.Quantize(Ref.ToDouble(v), 64, tie: 0);
        string what = $"{input} n={n} (seed {seed}; rerun with NATIVELORA_SEED={seed})";
        Assert.That(packed, Has.Length.EqualTo((n + 1) / 2));
        Assert.That(absmax, Is.EqualTo(refAbsmax.Select(a => (float)a)), "absmax " + what);
        int ties = 0;
        for (int i = 0; i < n; i++)
        {
            int q = Nf4.Reference.Nibble(packed, i);
            if (q == refCodes[i].Index) continue;
            double x = v[i] / refAbsmax[i / 64];
            Assert.That(NearMidpoint(x, DesignCodes), Is.True, $"element {i}: code {q}, reference {refCodes[i].Index} for x = {x:R}, not a float tie; {what}");
            ties++;
        }
        if (n % 2 == 1) Assert.That(packed[^1] & 15, Is.EqualTo(7), "odd tail padded with the zero code");
        if (n > 100) Assert.That(packed.Skip(32).Take(32), Is.All.EqualTo(0x77), "all-zero block");
        TestContext.Out.WriteLine($"{what}: {ties} float ties");

        var restored = state.ReferenceDequantize().Weights; // f32 products code·absmax, then the output dtype
        foreach (var outType in new[] { DType.F32, DType.BF16, DType.F16 })
        {
            using var output = Ref.Poisoned(outType, n);
            state.Dequantize(K, output);
            var got = output.ToFloatArray();
            for (int i = 0; i < n; i++)
                Assert.That(got[i], Is.EqualTo(outType.Round((float)restored[i])), $"dequantized element {i} to {outType}; {what}");
        }
    }

    // ---- (c) double quantization ----

    [Test]
    public void DoubleQuantizationRoundTripsWithinTheMapsResolution()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int rows = 150, cols = 256; // 600 blocks of 64: nested blocks of 256, 256 and 88
        var v = Gaussian(rng, rows * cols, 0.02);
        for (int r = 0; r < rows; r += 7) for (int c = 0; c < cols; c++) v[r * cols + c] *= 4; // spread the absmax values
        using var w = Ref.Upload(DType.F32, v, rows, cols);
        using var plain = Nf4Tensor.Quantize(K, w, doubleQuant: false);
        using var state = Nf4Tensor.Quantize(K, w);
        string what = $"(seed {seed}; rerun with NATIVELORA_SEED={seed})";
        var a = plain.Absmax.ToArray<float>();
        Assert.That(state.Packed.ToArray<byte>(), Is.EqualTo(plain.Packed.ToArray<byte>()), "codes do not depend on the absmax storage");
        Assert.That(state.NestedQuantMap!.ToArray<float>(), Is.EqualTo(Nf4.SignedDynamicMap()));

        double mean = a.Select(x => (double)x).Average();
        Assert.That(state.Offset, Is.EqualTo(mean).Within(mean * 2e-5), "offset = mean(absmax) (f32 sums of 256) " + what);
        var map = Nf4.SignedDynamicMap();
        var mapD = map.Select(x => (double)x).ToArray();
        var scale = state.NestedAbsmax!.ToArray<float>();
        var q = state.Absmax.ToArray<byte>();
        Assert.That(scale, Has.Length.EqualTo(3));
        double maxGap = 0;
        for (int i = 1; i < 256; i++) maxGap = Math.Max(maxGap, mapD[i] - mapD[i - 1]);
        using var restored = Ref.Poisoned(DType.F32, a.Length);
        state.DequantizeAbsmax(K, restored);
        var r2 = restored.ToArray<float>();
        var (refScale, refCodes) = Nf4.Reference.DoubleQuantize(Ref.ToDouble(a), state.Offset, map, 256, tie: 0);
        var refRestored = state.ReferenceDequantize().Absmax; // map[q]·scale + offset, rounded as stored
        double worst = 0;
        for (int g = 0; g < 3; g++)
        {
            float s = scale[g];
            Assert.That(s, Is.EqualTo((float)refScale[g]), $"nested scale {g}"); // max|a − offset|, rounded to f32 as stored
            for (int i = g * 256; i < Math.Min(a.Length, g * 256 + 256); i++)
            {
                double x = ((double)a[i] - state.Offset) / refScale[g];
                if (q[i] != refCodes[i].Index) Assert.That(NearMidpoint(x, mapD), Is.True, $"absmax {i}: code {q[i]}, reference {refCodes[i].Index}, x = {x:R}; {what}");
                Assert.That(r2[i], Is.EqualTo((float)refRestored[i]), $"restored absmax {i}");
                double err = Math.Abs(r2[i] - a[i]);
                Assert.That(err, Is.LessThanOrEqualTo(0.5 * maxGap * s * (1 + 1e-4) + 2e-7 * a[i]), $"absmax {i} error; {what}");
                worst = Math.Max(worst, err / a[i]);
            }
        }

        // the restored weights differ from plain NF4 only through the absmax: relative error per block ≤ the absmax's
        using var o1 = Ref.Poisoned(DType.F32, rows, cols);
        using var o2 = Ref.Poisoned(DType.F32, rows, cols);
        plain.Dequantize(K, o1);
        state.Dequantize(K, o2);
        double e1 = RelRms(o1.ToArray<float>(), v), e2 = RelRms(o2.ToArray<float>(), v);
        // small absmax values in a group with a wide spread get large relative errors (up to ~5% here): bitsandbytes' trade-off
        TestContext.Out.WriteLine($"absmax worst relative error {worst:E2}; weight relative RMS error NF4 {e1:F5}, NF4+DQ {e2:F5}");
        Assert.That(e2, Is.LessThan(e1 * 1.01), what);
    }

    // ---- (d) storage ----

    [Test]
    public void BitsPerParameterOfA4096SquareIsAbout4Point127()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const int d = 4096;
        var bits = new ushort[d * d];
        for (int i = 0; i < bits.Length; i++) bits[i] = FloatBits.FloatToBf16((float)(rng.NextDouble() - 0.5) * 0.04f);
        using var w = TestDevice.Shared.Allocate(DType.BF16, d, d);
        w.CopyFrom<ushort>(bits);
        using var state = Nf4Tensor.Quantize(K, w);
        long n = (long)d * d, blocks = n / 64, groups = (blocks + 255) / 256;
        Assert.That(state.Packed.ByteLength, Is.EqualTo(n / 2));
        Assert.That(state.Absmax.ByteLength, Is.EqualTo(blocks));
        Assert.That(state.NestedAbsmax!.ByteLength, Is.EqualTo(4 * groups));
        Assert.That(state.StorageBytes, Is.EqualTo(n / 2 + blocks + 4 * groups + 4 * 16 + 4 * 256 + 4));
        TestContext.Out.WriteLine($"4096x4096: {state.BitsPerParameter:F5} bits/parameter ({state.StorageBytes:N0} bytes); without double quantization {4 + 32.0 / 64:F3}");
        Assert.That(state.BitsPerParameter, Is.LessThanOrEqualTo(4.13).And.GreaterThan(4 + 8.0 / 64));
    }

    // ---- (e) NF4 vs absmax int4 ----

    private static double RelRms(float[] got, float[] reference)
    {
        double num = 0, den = 0;
        for (int i = 0; i < got.Length; i++) { double e = got[i] - (double)reference[i]; num += e * e; den += (double)reference[i] * reference[i]; }
        return Math.Sqrt(num / den);
    }

    // Symmetric absmax int4 in blocks of 64: q = round(7·v/absmax) ∈ [−7, 7], v' = q·absmax/7.
    private static float[] Int4RoundTrip(float[] v)
    {
        var o = new float[v.Length];
        for (int start = 0; start < v.Length; start += 64)
        {
            int end = Math.Min(v.Length, start + 64);
            double m = 0;
            for (int i = start; i < end; i++) m = Math.Max(m, Math.Abs((double)v[i]));
            for (int i = start; i < end; i++) o[i] = m == 0 ? 0 : (float)(Math.Clamp(Math.Round(7 * v[i] / m, MidpointRounding.ToEven), -7, 7) * m / 7);
        }
        return o;
    }

    // Squared error and squared norm summed over matrices: NF4, NF4 with double quantization, int4.
    private static (double Nf4, double Nf4Dq, double Int4) Errors(IEnumerable<(float[] Values, int Rows, int Cols)> matrices)
    {
        double den = 0, eNf4 = 0, eDq = 0, eInt4 = 0;
        foreach (var (values, rows, cols) in matrices)
        {
            using var w = Ref.Upload(DType.F32, values, rows, cols);
            using var s1 = Nf4Tensor.Quantize(K, w, doubleQuant: false);
            using var s2 = Nf4Tensor.Quantize(K, w);
            using var o = Ref.Poisoned(DType.F32, rows, cols);
            s1.Dequantize(K, o);
            var d1 = o.ToArray<float>();
            o.Poison();
            s2.Dequantize(K, o);
            var d2 = o.ToArray<float>();
            var d3 = Int4RoundTrip(values);
            for (int i = 0; i < values.Length; i++)
            {
                double x = values[i];
                den += x * x;
                eNf4 += (d1[i] - x) * (d1[i] - x);
                eDq += (d2[i] - x) * (d2[i] - x);
                eInt4 += (d3[i] - x) * (d3[i] - x);
            }
        }
        return (Math.Sqrt(eNf4 / den), Math.Sqrt(eDq / den), Math.Sqrt(eInt4 / den));
    }

    [Test]
    public void Nf4HasLowerErrorThanInt4OnGaussianAndRealWeights()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var gauss = Errors(new[] { (Gaussian(rng, 512 * 512, 0.02), 512, 512) });
        TestContext.Out.WriteLine($"Gaussian 512x512: relative RMS error NF4 {gauss.Nf4:F5}, NF4+DQ {gauss.Nf4Dq:F5}, int4 absmax {gauss.Int4:F5}");

        var path = NativeLora.Tests.Model.Llama2cImportTests.Stories260K;
        Assert.That(File.Exists(path), Is.True, $"shared data {path} is missing (it lies beside the checkout in ../shared/data)");
        var (config, weights) = Llama2cImporter.Read(path);
        var matrices = weights.Where(kv => kv.Key.EndsWith("_proj.weight") || kv.Key == "model.embed_tokens.weight")
            .Select(kv => (kv.Value, Rows: kv.Value.Length / ColsOf(kv.Key, config), Cols: ColsOf(kv.Key, config))).ToList();
        Assert.That(matrices, Has.Count.EqualTo(1 + 7 * config.NumLayers));
        var real = Errors(matrices);
        TestContext.Out.WriteLine($"stories260K ({matrices.Sum(m => m.Value.Length):N0} weights in {matrices.Count} matrices): relative RMS error NF4 {real.Nf4:F5}, NF4+DQ {real.Nf4Dq:F5}, int4 absmax {real.Int4:F5}");

        string what = $"(seed {seed})";
        Assert.That(gauss.Nf4, Is.LessThan(gauss.Int4), "Gaussian " + what);
        Assert.That(gauss.Nf4Dq, Is.LessThan(gauss.Int4), "Gaussian, double-quantized " + what);
        Assert.That(real.Nf4, Is.LessThan(real.Int4), "stories260K");
        Assert.That(real.Nf4Dq, Is.LessThan(real.Int4), "stories260K, double-quantized");
    }

    private static int ColsOf(string name, ModelConfig c) => name.Contains("down_proj") ? c.IntermediateSize : c.HiddenSize;

    // ---- serialization ----

    [Test]
    public void StateDictUsesHfNamesAndRoundTripsThroughSafetensors([Values(false, true)] bool doubleQuant)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const string prefix = "model.layers.0.mlp.down_proj.weight";
        var v = Gaussian(rng, 5 * 77, 0.02).Select(x => DType.BF16.Round(x)).ToArray();
        using var w = Ref.Upload(DType.BF16, v, 5, 77);
        using var state = Nf4Tensor.Quantize(K, w, doubleQuant);
        var dict = state.ToStateDict(prefix);

        var expectedKeys = new List<string> { prefix, prefix + ".absmax", prefix + ".quant_map", prefix + ".quant_state.bitsandbytes__nf4" };
        if (doubleQuant) expectedKeys.AddRange(new[] { prefix + ".nested_absmax", prefix + ".nested_quant_map" });
        Assert.That(dict.Keys, Is.EquivalentTo(expectedKeys));
        Assert.That(dict[prefix].Shape, Is.EqualTo(new long[] { 193, 1 }));
        Assert.That(dict[prefix].DType, Is.EqualTo(SafeTensorsDType.U8));
        Assert.That(dict[prefix + ".absmax"].DType, Is.EqualTo(doubleQuant ? SafeTensorsDType.U8 : SafeTensorsDType.F32));
        Assert.That(dict[prefix + ".absmax"].Shape, Is.EqualTo(new long[] { 7 }));
        Assert.That(dict[prefix + ".quant_map"].ToFloats().Select(c => (double)c), Is.EqualTo(DesignCodes));

        string json = Encoding.UTF8.GetString(dict[prefix + ".quant_state.bitsandbytes__nf4"].Data);
        const string head = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [5, 77]";
        if (!doubleQuant) Assert.That(json, Is.EqualTo(head + "}"));
        else
        {
            Assert.That(json, Does.StartWith(head + ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": "));
            Assert.That(dict[prefix + ".nested_absmax"].Shape, Is.EqualTo(new long[] { 1 }));
            Assert.That(dict[prefix + ".nested_quant_map"].ToFloats(), Is.EqualTo(Nf4.SignedDynamicMap()));
            using var doc = JsonDocument.Parse(json);
            Assert.That((float)doc.RootElement.GetProperty("nested_offset").GetDouble(), Is.EqualTo(state.Offset));
        }

        // through a safetensors file and back
        string file = Path.Combine(Path.GetTempPath(), $"nf4-{Guid.NewGuid():N}.safetensors");
        try
        {
            var writer = new SafeTensorsWriter();
            foreach (var (name, a) in dict) writer.Add(name, a.DType, a.Shape, a.Data);
            writer.Write(file);
            Dictionary<string, HostArray> loaded;
            using (var st = SafeTensorsFile.Open(file))
                loaded = st.Tensors.ToDictionary(t => t.Name, t => new HostArray(t.DType, t.Shape, st.GetBytes(t.Name).ToArray()));
            using var back = Nf4Tensor.FromStateDict(TestDevice.Shared, loaded, prefix);
            Assert.That(back.Nested, Is.EqualTo(doubleQuant));
            Assert.That(back.Shape, Is.EqualTo(new[] { 5, 77 }));
            Assert.That(back.DType, Is.EqualTo(DType.BF16));
            Assert.That(back.Offset, Is.EqualTo(state.Offset));
            using var o1 = Ref.Poisoned(DType.BF16, 5, 77);
            using var o2 = Ref.Poisoned(DType.BF16, 5, 77);
            state.Dequantize(K, o1);
            back.Dequantize(K, o2);
            Assert.That(o2.ToArray<ushort>(), Is.EqualTo(o1.ToArray<ushort>()), $"(seed {seed})");
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Test]
    public void FloatsAreWrittenAsPythonReprs()
    {
        // expected strings as Python 3 prints them (repr of the float64 value of each f32)
        Assert.That(Nf4Tensor.PythonFloatRepr(0.1f), Is.EqualTo("0.10000000149011612"));
        Assert.That(Nf4Tensor.PythonFloatRepr(0.0123f), Is.EqualTo("0.012299999594688416"));
        Assert.That(Nf4Tensor.PythonFloatRepr(2.5e-7f), Is.EqualTo("2.499999993688107e-07"));
        Assert.That(Nf4Tensor.PythonFloatRepr(-3.3f), Is.EqualTo("-3.299999952316284"));
        Assert.That(Nf4Tensor.PythonFloatRepr(1234567.8f), Is.EqualTo("1234567.75"));
        Assert.That(Nf4Tensor.PythonFloatRepr(1.25), Is.EqualTo("1.25"));
        Assert.That(Nf4Tensor.PythonFloatRepr(0.5), Is.EqualTo("0.5"));
        Assert.That(Nf4Tensor.PythonFloatRepr(1e-5), Is.EqualTo("1e-05"));
        Assert.That(Nf4Tensor.PythonFloatRepr(1e-4), Is.EqualTo("0.0001"));
        Assert.That(Nf4Tensor.PythonFloatRepr(1e16), Is.EqualTo("1e+16"));
        Assert.That(Nf4Tensor.PythonFloatRepr(1e15), Is.EqualTo("1000000000000000.0"));
        Assert.That(Nf4Tensor.PythonFloatRepr(123456789.0), Is.EqualTo("123456789.0"));
        Assert.That(Nf4Tensor.PythonFloatRepr(0.0), Is.EqualTo("0.0"));
    }

    [Test]
    public void MalformedStatesAreRejectedWithTheKey()
    {
        var quantMap = HostArray.Floats(DesignCodes.Select(c => (float)c).ToArray());
        Dictionary<string, HostArray> State(string json, HostArray? absmax = null, HostArray? map = null) => Dict(
            ("w", Bytes(new byte[64], 64, 1)), ("w.absmax", absmax ?? HostArray.Floats(new[] { 1f, 1f })), ("w.quant_map", map ?? quantMap),
            ("w.quant_state.bitsandbytes__nf4", Json(json)));
        const string ok = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [128]}";
        using (var s = Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok), "w")) Assert.That(s.DType, Is.EqualTo(DType.F16));

        Assert.That(() => Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok.Replace("nf4", "fp4")), "w"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("fp4"));
        Assert.That(() => Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok), "v"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("v.quant_state.bitsandbytes__nf4"));
        Assert.That(() => Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok, absmax: HostArray.Floats(new[] { 1f })), "w"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("w.absmax"));
        Assert.That(() => Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok, map: HostArray.Floats(new float[16])), "w"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("w.quant_map"));
        Assert.That(() => Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok.Replace("[128]", "[129]")), "w"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("w.absmax").Or.Message.Contains("'w'"));
        Assert.That(() => Nf4Tensor.FromStateDict(TestDevice.Shared, State(ok.Replace("\"blocksize\": 64", "\"blocksize\": 63")), "w"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("blocksize"));
    }
}
