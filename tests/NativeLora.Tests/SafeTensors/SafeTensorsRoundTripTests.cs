using System.Text;
using NativeLora.SafeTensors;
using static NativeLora.Tests.SafeTensors.SafeTensorsTestFiles;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.SafeTensors;

public class SafeTensorsRoundTripTests : TempDirTests
{
    static readonly SafeTensorsDType[] AllDTypes = Enum.GetValues<SafeTensorsDType>();

    [Test]
    public void DTypeNamesAndSizesFollowTheSpec()
    {
        var expected = new (string Name, int Size)[]
        {
            ("F64", 8), ("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8), ("I32", 4), ("I16", 2), ("I8", 1),
            ("U64", 8), ("U32", 4), ("U16", 2), ("U8", 1), ("BOOL", 1), ("F8_E4M3", 1), ("F8_E5M2", 1), ("F8_E8M0", 1), ("C64", 8),
        };
        Assert.That(expected, Has.Length.EqualTo(AllDTypes.Length));
        foreach (var (name, size) in expected)
        {
            Assert.That(SafeTensorsDTypes.TryParse(name, out var dtype), Is.True, name);
            Assert.That(dtype.ToHeaderString(), Is.EqualTo(name));
            Assert.That(dtype.ElementSize(), Is.EqualTo(size), name);
        }
        foreach (var bad in new[] { "f32", "Bf16", "F32 ", "float32", "1", "", "F4", "U4" })
            Assert.That(SafeTensorsDTypes.TryParse(bad, out _), Is.False, bad);
    }

    [Test]
    public void EveryDTypeAndShapeRoundTrips()
    {
        long[][] shapes = [[], [0], [3], [2, 3], [2, 0, 3], [1, 1, 1, 5]];
        var rng = new Random(1234);
        var writer = new SafeTensorsWriter();
        var expected = new List<(string Name, SafeTensorsDType DType, long[] Shape, byte[] Data)>();
        foreach (var dtype in AllDTypes)
            foreach (var shape in shapes)
            {
                long count = shape.Aggregate(1L, (a, d) => a * d);
                var data = new byte[count * dtype.ElementSize()];
                rng.NextBytes(data);
                string name = $"layer.{dtype}.[{string.Join("x", shape)}]";
                writer.Add(name, dtype, shape, data);
                expected.Add((name, dtype, shape, data));
            }
        writer.SetMetadata("format", "pt").SetMetadata("note", "ünïcödé ✓ \"quoted\" \\ / +<>");
        string path = Path.Combine(Dir, "all.safetensors");
        writer.Write(path);

        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(expected.Select(e => e.Name)), "header order = insertion order");
        Assert.That(file.Metadata, Is.EquivalentTo(new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcödé ✓ \"quoted\" \\ / +<>" }));
        Assert.That((8 + file.HeaderLength) % 8, Is.Zero, "data buffer is 8-byte aligned");
        foreach (var (name, dtype, shape, data) in expected)
        {
            var info = file.Get(name);
            Assert.That(info.DType, Is.EqualTo(dtype), name);
            Assert.That(info.Shape, Is.EqualTo(shape), name);
            Assert.That(info.ByteLength, Is.EqualTo(data.Length), name);
            Assert.That(info.ElementCount, Is.EqualTo(data.Length / dtype.ElementSize()), name);
            Assert.That(file.GetBytes(name).ToArray(), Is.EqualTo(data), name);
        }
    }

    [Test]
    public void EmptyFileWithOnlyMetadataOrNothingRoundTrips()
    {
        string empty = Path.Combine(Dir, "empty.safetensors");
        new SafeTensorsWriter().Write(empty);
        Assert.That(File.ReadAllBytes(empty), Is.EqualTo(Build("{}", [])), "{} padded to 8 bytes");
        using (var f = SafeTensorsFile.Open(empty))
        {
            Assert.That(f.Tensors, Is.Empty);
            Assert.That(f.Metadata, Is.Empty);
        }

        string metaOnly = Path.Combine(Dir, "meta.safetensors");
        new SafeTensorsWriter().SetMetadata("format", "pt").Write(metaOnly);
        using var g = SafeTensorsFile.Open(metaOnly);
        Assert.That(g.Tensors, Is.Empty);
        Assert.That(g.Metadata["format"], Is.EqualTo("pt"));
    }

    [Test]
    public void WriterLayoutMatchesHandBuiltBytes()
    {
        // Expected bytes from the spec rules alone: compact JSON, __metadata__ first, tensors in
        // order with contiguous offsets, spaces until 8 + N is a multiple of 8, then the data.
        string json = "{\"__metadata__\":{\"format\":\"pt\"},"
                    + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    + "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]},"
                    + "\"sc\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[11,13]}}";
        int n = json.Length;
        int padded = (n + 7) / 8 * 8; // 8 + padded is a multiple of 8 because 8 is
        var expected = new List<byte> { (byte)padded, (byte)(padded >> 8), 0, 0, 0, 0, 0, 0 };
        expected.AddRange(Encoding.ASCII.GetBytes(json));
        expected.AddRange(Enumerable.Repeat((byte)0x20, padded - n));
        expected.AddRange(new byte[] { 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0 }); // 1.0f, -2.0f
        expected.AddRange(new byte[] { 1, 2, 3 });
        expected.AddRange(new byte[] { 0xFE, 0xFF }); // (short)-2
        Assert.That(padded - n, Is.GreaterThan(0), "the case should exercise padding");

        string path = Path.Combine(Dir, "layout.safetensors");
        new SafeTensorsWriter()
            .SetMetadata("format", "pt")
            .Add("a", SafeTensorsDType.F32, [2], new byte[] { 0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0 })
            .Add("b", SafeTensorsDType.U8, [3], new byte[] { 1, 2, 3 })
            .Add("sc", SafeTensorsDType.I16, [], new byte[] { 0xFE, 0xFF })
            .Write(path);
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(expected.ToArray()));
        Assert.That(Directory.GetFiles(Dir), Has.Length.EqualTo(1), "no temp file left behind");
    }

    [Test]
    public void HandWrittenFixtureReads()
    {
        // Written as another tool might: pretty-printed, keys in non-offset order, unpadded header,
        // zero-length tensors at the same offset as a real one, unknown-to-us key order in entries.
        string json = """
            {
              "w.bf16": {"shape": [2, 2], "dtype": "BF16", "data_offsets": [16, 24]},
              "__metadata__": {"format": "pt", "empty": ""},
              "x.f32": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "empty": {"dtype": "F16", "shape": [0, 7], "data_offsets": [24, 24]},
              "step": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]},
              "empty2": {"dtype": "F64", "shape": [3, 0], "data_offsets": [32, 32]}
            }
            """;
        byte[] data =
        [
            .. Floats(0.5f, -1.25f, 3.0e-8f, float.PositiveInfinity),
            0x80, 0x3F, 0x00, 0xC0, 0x49, 0x40, 0x00, 0x00, // BF16 1.0, -2.0, 3.140625, 0.0
            0x2A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, // I64 long.MinValue + 42
        ];
        var bytes = Build(json, data, pad: false);
        Assert.That((8 + Encoding.UTF8.GetByteCount(json)) % 8, Is.Not.Zero, "fixture header is deliberately unaligned");
        string path = WriteFile("fixture.safetensors", bytes);

        using var f = SafeTensorsFile.Open(path);
        Assert.That(f.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "w.bf16", "x.f32", "empty", "step", "empty2" }));
        Assert.That(f.Metadata, Is.EquivalentTo(new Dictionary<string, string> { ["format"] = "pt", ["empty"] = "" }));
        Assert.That(f.ReadAsFloat32("x.f32"), Is.EqualTo(new[] { 0.5f, -1.25f, 3.0e-8f, float.PositiveInfinity }));
        Assert.That(f.ReadAsFloat32("w.bf16"), Is.EqualTo(new[] { 1.0f, -2.0f, 3.140625f, 0.0f }));
        Assert.That(f.GetSpan<long>("step").ToArray(), Is.EqualTo(new[] { long.MinValue + 42 }));
        Assert.That(f.Get("step").Shape, Is.Empty);
        Assert.That(f.Get("step").ElementCount, Is.EqualTo(1));
        Assert.That(f.Get("empty").ElementCount, Is.Zero);
        Assert.That(f.GetBytes("empty").Length, Is.Zero);
        Assert.That(f.ReadAsFloat32("empty2"), Is.Empty);
        Assert.That(f.Get("w.bf16").DataBegin, Is.EqualTo(16));
        Assert.That(f.DataLength, Is.EqualTo(32));
    }

    [Test]
    public void LookupErrorsNameFileAndTensor()
    {
        string path = Path.Combine(Dir, "lookup.safetensors");
        new SafeTensorsWriter().Add("ints", SafeTensorsDType.I32, [2], new byte[8]).Write(path);
        using var f = SafeTensorsFile.Open(path);

        Assert.That(f.TryGet("nope", out _), Is.False);
        var missing = Assert.Throws<KeyNotFoundException>(() => f.Get("nope"))!;
        Assert.That(missing.Message, Does.Contain(path).And.Contain("'nope'"));
        Assert.Throws<KeyNotFoundException>(() => f.GetBytes("nope"));

        var wrongSize = Assert.Throws<ArgumentException>(() => f.GetSpan<short>("ints"))!;
        Assert.That(wrongSize.Message, Does.Contain(path).And.Contain("'ints'").And.Contain("I32"));
        Assert.That(f.GetSpan<uint>("ints").Length, Is.EqualTo(2));

        var notFloat = Assert.Throws<NotSupportedException>(() => f.ReadAsFloat32("ints"))!;
        Assert.That(notFloat.Message, Does.Contain(path).And.Contain("'ints'"));

        f.Dispose();
        Assert.Throws<ObjectDisposedException>(() => f.Get("ints"));
    }

    [Test]
    public void WriterRejectsBadInput()
    {
        var w = new SafeTensorsWriter().Add("a", SafeTensorsDType.F32, [1], new byte[4]);
        Assert.Throws<ArgumentException>(() => w.Add("a", SafeTensorsDType.F32, [1], new byte[4]), "duplicate");
        Assert.Throws<ArgumentException>(() => w.Add("__metadata__", SafeTensorsDType.U8, [1], new byte[1]), "reserved name");
        Assert.Throws<ArgumentException>(() => w.Add("b", SafeTensorsDType.F32, [2], new byte[4]), "length vs shape");
        Assert.Throws<ArgumentException>(() => w.Add("c", SafeTensorsDType.U8, [-1], new byte[0]), "negative dim");
        Assert.Throws<ArgumentException>(() => w.Add("d", SafeTensorsDType.U8, [long.MaxValue, 4], new byte[0]), "overflow");
        Assert.Throws<ArgumentException>(() => w.Add("bad\ud800", SafeTensorsDType.U8, [1], new byte[1]), "lone surrogate");
        w.Write(Path.Combine(Dir, "w.safetensors"));
        using var file = SafeTensorsFile.Open(Path.Combine(Dir, "w.safetensors"));
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "a" }), "a rejected tensor is not added");
    }

    // ---- float conversions, checked against decoders written from the bit-layout definitions ----

    static double DecodeHalfByFormula(ushort bits)
    {
        int sign = bits >> 15, exp = (bits >> 10) & 0x1F, mant = bits & 0x3FF;
        double s = sign == 1 ? -1 : 1;
        if (exp == 0x1F) return mant == 0 ? s * double.PositiveInfinity : double.NaN;
        if (exp == 0) return s * mant * Math.Pow(2, -24);            // subnormal: m/1024 · 2^-14
        return s * (1 + mant / 1024.0) * Math.Pow(2, exp - 15);
    }

    static double DecodeBf16ByFormula(ushort bits)
    {
        int sign = bits >> 15, exp = (bits >> 7) & 0xFF, mant = bits & 0x7F;
        double s = sign == 1 ? -1 : 1;
        if (exp == 0xFF) return mant == 0 ? s * double.PositiveInfinity : double.NaN;
        if (exp == 0) return s * mant * Math.Pow(2, -133);           // subnormal: m/128 · 2^-126
        return s * (1 + mant / 128.0) * Math.Pow(2, exp - 127);
    }

    float[] ReadAllSixteenBitPatterns(SafeTensorsDType dtype)
    {
        var data = new byte[65536 * 2];
        for (int i = 0; i < 65536; i++) { data[2 * i] = (byte)i; data[2 * i + 1] = (byte)(i >> 8); }
        string path = WriteFile(dtype + ".safetensors",
            Build($"{{\"all\":{{\"dtype\":\"{dtype.ToHeaderString()}\",\"shape\":[256,256],\"data_offsets\":[0,{data.Length}]}}}}", data));
        using var f = SafeTensorsFile.Open(path);
        return f.ReadAsFloat32("all");
    }

    [Test]
    public void F16ConversionMatchesFormulaForAllBitPatterns()
    {
        var got = ReadAllSixteenBitPatterns(SafeTensorsDType.F16);
        for (int i = 0; i < 65536; i++)
        {
            double want = DecodeHalfByFormula((ushort)i);
            if (double.IsNaN(want)) Assert.That(float.IsNaN(got[i]), $"0x{i:X4} should be NaN");
            else if (got[i] != (float)want) Assert.Fail($"F16 0x{i:X4}: got {got[i]:R}, want {want:R}");
        }
        Assert.That(got[0x3C00], Is.EqualTo(1.0f));
        Assert.That(got[0x7BFF], Is.EqualTo(65504f));
        Assert.That(got[0x0001], Is.EqualTo(5.9604644775390625e-8f));
    }

    [Test]
    public void Bf16ConversionMatchesFormulaForAllBitPatterns()
    {
        var got = ReadAllSixteenBitPatterns(SafeTensorsDType.BF16);
        for (int i = 0; i < 65536; i++)
        {
            double want = DecodeBf16ByFormula((ushort)i);
            if (double.IsNaN(want)) Assert.That(float.IsNaN(got[i]), $"0x{i:X4} should be NaN");
            else if (got[i] != (float)want) Assert.Fail($"BF16 0x{i:X4}: got {got[i]:R}, want {want:R}");
        }
        Assert.That(got[0x3F80], Is.EqualTo(1.0f));
        Assert.That(got[0xC049], Is.EqualTo(-3.140625f));
    }

    [Test]
    public void F64AndF32ConversionsAreExactOrNearest()
    {
        // F64 values chosen so the float32 result is known without casting: exact, overflow, underflow, and ties.
        double[] f64 = [3.0, -0.0, 1e300, -1e300, 1e-50, 16777217.0, 16777219.0, 0.1];
        float[] want = [3.0f, -0.0f, float.PositiveInfinity, float.NegativeInfinity, 0.0f, 16777216f, 16777220f, 0.100000001490116119384765625f];
        var data = new byte[f64.Length * 8];
        for (int i = 0; i < f64.Length; i++)
        {
            ulong bits = (ulong)BitConverter.DoubleToInt64Bits(f64[i]);
            for (int k = 0; k < 8; k++) data[8 * i + k] = (byte)(bits >> (8 * k));
        }
        // F32 with a NaN payload must survive bit-exactly.
        byte[] f32 = [0x01, 0x00, 0xC0, 0x7F, 0x00, 0x00, 0x80, 0xBF];
        string header = $"{{\"d\":{{\"dtype\":\"F64\",\"shape\":[{f64.Length}],\"data_offsets\":[0,{data.Length}]}},"
                      + $"\"f\":{{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[{data.Length},{data.Length + 8}]}}}}";
        string path = WriteFile("f64.safetensors", Build(header, [.. data, .. f32]));
        using var f = SafeTensorsFile.Open(path);
        var got = f.ReadAsFloat32("d");
        for (int i = 0; i < want.Length; i++)
            Assert.That(BitConverter.SingleToInt32Bits(got[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(want[i])), $"F64 {f64[i]:R}");
        var g = f.ReadAsFloat32("f");
        Assert.That(BitConverter.SingleToUInt32Bits(g[0]), Is.EqualTo(0x7FC00001u));
        Assert.That(g[1], Is.EqualTo(-1.0f));
    }
}
