using System.Buffers.Binary;
using NativeLora.Gguf;
using NativeLora.Tests.SafeTensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Gguf;

public class GgufRoundTripTests : TempDirTests
{
    /// <summary>
    /// A file written by ggml's own gguf_write_to_file (libggml-base from the npm package
    /// @node-llama-cpp/linux-x64 3.22.1; harness in scripts/ggml-reference/ggufio.c): one KV of each
    /// scalar type, arrays of i32, f32 and strings, a Q8_0 tensor [3, 64] whose byte i is 7·i mod 256,
    /// and an F32 tensor [5] = 0, 0.25, …, 1.
    /// </summary>
    const string GgmlWrittenFile =
        "R0dVRgMAAAACAAAAAAAAAA8AAAAAAAAABAAAAAAAAAB0LnU4AAAAAMgEAAAAAAAAAHQuaTgBAAAA+wUAAAAAAAAAdC51MTYCAAAAYOoFAAAAAAAAAHQuaTE2" +
        "AwAAANCKBQAAAAAAAAB0LnUzMgQAAAAAKGvuBQAAAAAAAAB0LmkzMgUAAAAAbMqIBQAAAAAAAAB0LmYzMgYAAAAAAMA/BQAAAAAAAAB0LnU2NAoAAAAAAAjF" +
        "odjM+QUAAAAAAAAAdC5pNjQLAAAAAAB8Ha+TGYMFAAAAAAAAAHQuZjY0DAAAAAAAAAAAAALABgAAAAAAAAB0LmJvb2wHAAAAAQUAAAAAAAAAdC5zdHIIAAAA" +
        "BgAAAAAAAABow6lsbG8JAAAAAAAAAHQuYXJyX2kzMgkAAAAFAAAAAwAAAAAAAAABAAAA/v///wMAAAAJAAAAAAAAAHQuYXJyX2YzMgkAAAAGAAAAAgAAAAAA" +
        "AAAAAAA/AACAvwkAAAAAAAAAdC5hcnJfc3RyCQAAAAgAAAADAAAAAAAAAAEAAAAAAAAAYQAAAAAAAAAAAgAAAAAAAADDvBMAAAAAAAAAYmxrLjAuYXR0bl9x" +
        "LndlaWdodAIAAABAAAAAAAAAAAMAAAAAAAAACAAAAAAAAAAAAAAAEgAAAAAAAABvdXRwdXRfbm9ybS53ZWlnaHQBAAAABQAAAAAAAAAAAAAA4AAAAAAAAAAA" +
        "AAAAAAAHDhUcIyoxOD9GTVRbYmlwd36FjJOaoaivtr3Ey9LZ4Ofu9fwDChEYHyYtNDtCSVBXXmVsc3qBiI+WnaSrsrnAx87V3OPq8fj/Bg0UGyIpMDc+RUxT" +
        "WmFob3Z9hIuSmaCnrrW8w8rR2N/m7fT7AgkQFx4lLDM6QUhPVl1ka3J5gIeOlZyjqrG4v8bN1Nvi6fD3/gUMExohKC82PURLUllgZ251fIOKkZifpq20u8LJ" +
        "0Nfe5ezz+gEIDxYdJCsyOUBHTlVcY2pxeH+GjQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgD4AAAA/AABAPwAAgD8AAAAAAAAAAAAAAAA=";

    [Test]
    public void ReadsAFileWrittenByGgml()
    {
        string path = WriteFile("ggml.gguf", Convert.FromBase64String(GgmlWrittenFile));
        using var f = GgufFile.Open(path);
        Assert.That(f.Version, Is.EqualTo(3u));
        Assert.That(f.Alignment, Is.EqualTo(32u));
        Assert.That(f.DataOffset, Is.EqualTo(544));
        Assert.That(f.GetValue("t.u8").AsUInt8(), Is.EqualTo(200));
        Assert.That(f.GetValue("t.i8").AsInt8(), Is.EqualTo(-5));
        Assert.That(f.GetValue("t.u16").AsUInt16(), Is.EqualTo(60000));
        Assert.That(f.GetValue("t.i16").AsInt16(), Is.EqualTo(-30000));
        Assert.That(f.GetValue("t.u32").AsUInt32(), Is.EqualTo(4000000000u));
        Assert.That(f.GetValue("t.i32").AsInt32(), Is.EqualTo(-2000000000));
        Assert.That(f.GetValue("t.f32").AsFloat32(), Is.EqualTo(1.5f));
        Assert.That(f.GetValue("t.u64").AsUInt64(), Is.EqualTo(18000000000000000000ul));
        Assert.That(f.GetValue("t.i64").AsInt64(), Is.EqualTo(-9000000000000000000L));
        Assert.That(f.GetValue("t.f64").AsFloat64(), Is.EqualTo(-2.25));
        Assert.That(f.GetValue("t.bool").AsBool(), Is.True);
        Assert.That(f.GetValue("t.str").AsString(), Is.EqualTo("héllo"));
        Assert.That(f.GetValue("t.arr_i32").AsInt32Array(), Is.EqualTo(new[] { 1, -2, 3 }));
        Assert.That(f.GetValue("t.arr_f32").AsFloat32Array(), Is.EqualTo(new[] { 0.5f, -1f }));
        Assert.That(f.GetValue("t.arr_str").AsStringArray(), Is.EqualTo(new[] { "a", "", "ü" }));
        var q = f.GetTensor("blk.0.attn_q.weight");
        Assert.That(q.Type, Is.EqualTo(GgmlType.Q8_0));
        Assert.That(q.Dimensions, Is.EqualTo(new long[] { 64, 3 }));
        Assert.That(q.Shape, Is.EqualTo(new long[] { 3, 64 }));
        var bytes = f.GetBytes(q.Name);
        Assert.That(bytes.Length, Is.EqualTo(3 * 2 * 34));
        for (int i = 0; i < bytes.Length; i++) Assert.That(bytes[i], Is.EqualTo((byte)(7 * i)));
        Assert.That(f.ReadAsFloat32("output_norm.weight"), Is.EqualTo(new[] { 0f, 0.25f, 0.5f, 0.75f, 1f }));
    }

    [Test]
    public void RewritingGgmlsFileGivesTheSameBytes()
    {
        // Same KVs and tensors in the same order: our writer must lay the file out exactly as ggml's does.
        byte[] original = Convert.FromBase64String(GgmlWrittenFile);
        string path = WriteFile("ggml.gguf", original);
        var w = new GgufWriter();
        using (var f = GgufFile.Open(path))
        {
            foreach (var kv in f.Metadata) w.Set(kv.Key, kv.Value);
            foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Type, t.Shape, f.GetBytes(t.Name).ToArray());
        }
        string again = Path.Combine(Dir, "again.gguf");
        w.Write(again);
        Assert.That(File.ReadAllBytes(again), Is.EqualTo(original));
    }

    [Test]
    public void MetadataOfEveryTypeRoundTrips()
    {
        var w = new GgufWriter()
            .Set("a.u8", GgufValue.U8(255)).Set("a.i8", GgufValue.I8(-128)).Set("a.u16", GgufValue.U16(65535)).Set("a.i16", GgufValue.I16(-32768))
            .Set("a.u32", GgufValue.U32(uint.MaxValue)).Set("a.i32", GgufValue.I32(int.MinValue)).Set("a.f32", GgufValue.F32(-0.1f))
            .Set("a.bool", GgufValue.Bool(false)).Set("a.str", GgufValue.String("日本語 ✓")).Set("a.empty", GgufValue.String(""))
            .Set("a.u64", GgufValue.U64(ulong.MaxValue)).Set("a.i64", GgufValue.I64(long.MinValue)).Set("a.f64", GgufValue.F64(Math.PI))
            .Set("b.u8", GgufValue.Array(new byte[] { 1, 2 })).Set("b.i8", GgufValue.Array(new sbyte[] { -1 })).Set("b.u16", GgufValue.Array(new ushort[] { 7 }))
            .Set("b.i16", GgufValue.Array(new short[] { -7, 7 })).Set("b.u32", GgufValue.Array(new uint[] { 3 })).Set("b.i32", GgufValue.Array(new[] { -3 }))
            .Set("b.f32", GgufValue.Array(new[] { float.NaN, float.NegativeInfinity, 1e-45f })).Set("b.bool", GgufValue.Array(new[] { true, false, true }))
            .Set("b.str", GgufValue.Array(new[] { "<s>", "", "Ġthe", "\n", "é" })).Set("b.u64", GgufValue.Array(new ulong[] { 1ul << 63 }))
            .Set("b.i64", GgufValue.Array(new long[] { -1 })).Set("b.f64", GgufValue.Array(new[] { 0.5, -0.0 })).Set("b.none", GgufValue.Array(Array.Empty<int>()))
            .Set("a.u8", GgufValue.U8(254)); // replacing keeps the first position
        string path = Path.Combine(Dir, "meta.gguf");
        w.Write(path);
        using var f = GgufFile.Open(path);
        Assert.That(f.Metadata.Select(kv => kv.Key), Is.EqualTo(w.Metadata.Select(kv => kv.Key)));
        foreach (var kv in w.Metadata)
        {
            var got = f.GetValue(kv.Key);
            Assert.That(got.Type, Is.EqualTo(kv.Value.Type), kv.Key);
            Assert.That(got.ElementType, Is.EqualTo(kv.Value.ElementType), kv.Key);
            Assert.That(got.RawValue, Is.EqualTo(kv.Value.RawValue), kv.Key); // NUnit compares arrays element-wise; NaN equals NaN
        }
        Assert.That(f.GetValue("a.u8").AsUInt8(), Is.EqualTo(254));
        Assert.That(BitConverter.DoubleToInt64Bits(f.GetValue("b.f64").AsFloat64Array()[1]), Is.EqualTo(BitConverter.DoubleToInt64Bits(-0.0)));
        Assert.That(f.GetValue("a.u32").AsUInt32(), Is.EqualTo(uint.MaxValue));
        Assert.Throws<InvalidCastException>(() => f.GetValue("a.u32").AsInt32());
        Assert.Throws<InvalidCastException>(() => f.GetValue("b.str").AsInt32Array());
        Assert.That(f.Tensors, Is.Empty);
    }

    [TestCase(32u)]
    [TestCase(64u)]
    [TestCase(1u)]
    public void TensorsRoundTripWithShapesReversedAndDataAligned(uint alignment)
    {
        var rng = new Random(3);
        var f32 = new float[2 * 3 * 5];
        for (int i = 0; i < f32.Length; i++) f32[i] = (float)rng.NextDouble();
        var raw = new byte[7];
        rng.NextBytes(raw);
        var q = new float[4 * 256];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() - 0.5);
        var streamed = new byte[2 * 34];
        rng.NextBytes(streamed);
        for (int b = 0; b < 2; b++) { streamed[34 * b] = 0; streamed[34 * b + 1] = 0x3c; } // d = 1.0

        var w = new GgufWriter(alignment)
            .Set("general.architecture", "llama")
            .AddTensor("f32", GgmlType.F32, [2, 3, 5], () => f32)
            .AddTensor("bytes", GgmlType.I8, [7], raw)
            .AddTensor("q4k", GgmlType.Q4_K, [4, 256], () => q)
            .AddTensor("empty", GgmlType.F16, [0, 4], ReadOnlyMemory<byte>.Empty)
            .AddTensor("streamed", GgmlType.Q8_0, [2, 32], s => { s.Write(streamed, 0, 10); s.Write(streamed.AsSpan(10)); });
        string path = Path.Combine(Dir, "t.gguf");
        w.Write(path);

        byte[] file = File.ReadAllBytes(path);
        using var g = GgufFile.Open(path);
        Assert.That(g.Alignment, Is.EqualTo(alignment));
        if (alignment != 32) Assert.That(g.GetValue("general.alignment").AsUInt32(), Is.EqualTo(alignment));
        else Assert.That(g.TryGetValue("general.alignment", out _), Is.False, "the default is not written");
        Assert.That(g.DataOffset % alignment, Is.EqualTo(0));
        Assert.That(g.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "f32", "bytes", "q4k", "empty", "streamed" }));
        Assert.That(g.GetTensor("f32").Dimensions, Is.EqualTo(new long[] { 5, 3, 2 }), "ne[0] is the innermost dimension");
        Assert.That(g.GetTensor("f32").Shape, Is.EqualTo(new long[] { 2, 3, 5 }));
        Assert.That(g.ReadAsFloat32("f32"), Is.EqualTo(f32));
        Assert.That(g.GetBytes("bytes").ToArray(), Is.EqualTo(raw));
        Assert.That(g.GetBytes("q4k").ToArray(), Is.EqualTo(GgmlQuantsTests.Encode(GgmlType.Q4_K, q)));
        Assert.That(g.GetTensor("q4k").ByteLength, Is.EqualTo(4 * 144));
        Assert.That(g.GetTensor("empty").ByteLength, Is.EqualTo(0));
        Assert.That(g.GetBytes("streamed").ToArray(), Is.EqualTo(streamed));
        long expectedOffset = 0;
        foreach (var t in g.Tensors)
        {
            Assert.That(t.Offset, Is.EqualTo(expectedOffset), $"{t.Name}: tensors follow each other, each padded to the alignment");
            long end = g.DataOffset + t.Offset + t.ByteLength, padded = (end + alignment - 1) / alignment * alignment;
            for (long i = end; i < padded; i++) Assert.That(file[i], Is.EqualTo(0), $"padding after {t.Name}");
            expectedOffset += (t.ByteLength + alignment - 1) / alignment * alignment;
        }
        Assert.That(file.Length, Is.EqualTo(g.DataOffset + expectedOffset), "the last tensor is padded too, as ggml writes it");
        // Header fields at fixed places: magic, version 3, counts.
        Assert.That(file[..4], Is.EqualTo("GGUF"u8.ToArray()));
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(4)), Is.EqualTo(3u));
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(8)), Is.EqualTo(5ul));
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(16)), Is.EqualTo(alignment != 32 ? 2ul : 1ul));
    }

    [Test]
    public void ReadsAHandBuiltFileWithTensorsOutOfOrderAndGaps()
    {
        // Offsets need not follow the info order (the spec only asks for alignment); 64-byte gap before "a".
        var b = new GgufTestBytes().Header(tensors: 2, kvs: 1).KvString("general.architecture", "x")
            .Tensor("a", 0, 64, 2)   // F32 [2] at 64
            .Tensor("b", 1, 0, 4)    // F16 [4] at 0
            .Pad();
        b.Raw(0x00, 0x3c, 0x00, 0x40, 0x00, 0xc0, 0x00, 0x00).Zeros(56).Raw(0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0);
        string path = WriteFile("hand.gguf", b.ToArray());
        using var f = GgufFile.Open(path);
        Assert.That(f.ReadAsFloat32("b"), Is.EqualTo(new[] { 1f, 2f, -2f, 0f }));
        Assert.That(f.ReadAsFloat32("a"), Is.EqualTo(new[] { 1f, -2f }));
        Assert.That(f.Version, Is.EqualTo(3u));
    }

    [Test]
    public void Version2IsReadLikeVersion3()
    {
        var b = new GgufTestBytes().Header(1, 0, version: 2).Tensor("x", 0, 0, 1).Pad().Raw(0, 0, 0x80, 0x3f);
        using var f = GgufFile.Open(WriteFile("v2.gguf", b.ToArray()));
        Assert.That(f.Version, Is.EqualTo(2u));
        Assert.That(f.ReadAsFloat32("x"), Is.EqualTo(new[] { 1f }));
    }

    [Test]
    public void WriterRejectsBadInputAndLeavesNoFile()
    {
        var w = new GgufWriter();
        Assert.Throws<ArgumentException>(() => w.AddTensor("q", GgmlType.Q4_K, [2, 100], ReadOnlyMemory<byte>.Empty), "rows not whole blocks");
        Assert.Throws<ArgumentException>(() => w.AddTensor("x", GgmlType.F32, [1, 1, 1, 1, 1], new byte[4]), "5 dims");
        Assert.Throws<ArgumentException>(() => w.AddTensor(new string('n', 64), GgmlType.F32, [1], new byte[4]), "ggml's 63-byte name limit");
        Assert.Throws<ArgumentException>(() => w.AddTensor("x", GgmlType.F32, [2], new byte[4]), "wrong byte count");
        Assert.Throws<ArgumentException>(() => w.AddTensor("x", (GgmlType)4, [2], new byte[4]), "removed type id");
        Assert.Throws<ArgumentException>(() => w.Set("general.alignment", 64u));
        Assert.Throws<ArgumentException>(() => w.Set("", "x"));
        Assert.Throws<ArgumentException>(() => new GgufWriter(48));
        w.AddTensor("x", GgmlType.F32, [1], new byte[4]);
        Assert.Throws<ArgumentException>(() => w.AddTensor("x", GgmlType.F32, [1], new byte[4]), "duplicate");

        foreach (var (name, write) in new (string, Action<Stream>)[] { ("short", s => s.Write(new byte[3])), ("long", s => s.Write(new byte[5])) })
        {
            var bad = new GgufWriter().AddTensor("t", GgmlType.F32, [1], write);
            string path = Path.Combine(Dir, name + ".gguf");
            Assert.Throws<InvalidOperationException>(() => bad.Write(path));
            Assert.That(Directory.GetFiles(Dir), Is.Empty, "atomic write: nothing left behind");
        }
        var wrongCount = new GgufWriter().AddTensor("t", GgmlType.Q8_0, [32], () => new float[31]);
        Assert.Throws<InvalidOperationException>(() => wrongCount.Write(Path.Combine(Dir, "c.gguf")));
        var nonFinite = new GgufWriter().AddTensor("t", GgmlType.Q8_0, [32], () => Enumerable.Repeat(float.NaN, 32).ToArray());
        Assert.Throws<ArgumentException>(() => nonFinite.Write(Path.Combine(Dir, "n.gguf")));
        Assert.That(Directory.GetFiles(Dir), Is.Empty);
    }

    [Test]
    public void ProducersRunOneAtATimeDuringWrite()
    {
        var log = new List<string>();
        var w = new GgufWriter()
            .AddTensor("a", GgmlType.F32, [8], () => { log.Add("a"); return new float[8]; })
            .AddTensor("b", GgmlType.F32, [8], s => { log.Add("b"); s.Write(new byte[32]); });
        Assert.That(log, Is.Empty, "nothing is produced when tensors are added");
        using var ms = new MemoryStream();
        w.WriteTo(ms);
        Assert.That(log, Is.EqualTo(new[] { "a", "b" }));
    }
}
