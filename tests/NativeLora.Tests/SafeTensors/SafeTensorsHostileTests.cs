using System.Text;
using NativeLora.SafeTensors;
using static NativeLora.Tests.SafeTensors.SafeTensorsTestFiles;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.SafeTensors;

/// <summary>One test per way a file can be malformed: each must raise SafeTensorsFormatException
/// whose message starts with the path (and names the tensor), and must release the file.</summary>
public class SafeTensorsHostileTests : TempDirTests
{
    const string U8One = "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}";

    SafeTensorsFormatException Rejects(byte[] bytes, string? tensor = null, string? fragment = null)
    {
        string path = WriteFile("bad.safetensors", bytes);
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path).Dispose())!;
        Assert.That(e.Message, Does.StartWith(path + ":"));
        Assert.That(e.FilePath, Is.EqualTo(path));
        if (tensor is not null)
        {
            Assert.That(e.Message, Does.Contain($"'{tensor}'"));
            Assert.That(e.TensorName, Is.EqualTo(tensor));
        }
        if (fragment is not null) Assert.That(e.Message, Does.Contain(fragment));
        AssertNotHeldOpen(path);
        return e;
    }

    // .NET on Unix takes an advisory lock (shared for FileShare.Read); an exclusive open fails while any handle is leaked.
    static void AssertNotHeldOpen(string path)
    {
        using var exclusive = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
    }

    [Test]
    public void OpenFileIsDetectedAsHeld_ControlForTheHandleCheck()
    {
        string path = Path.Combine(Dir, "ok.safetensors");
        new SafeTensorsWriter().Add("a", SafeTensorsDType.U8, [1], new byte[1]).Write(path);
        using (SafeTensorsFile.Open(path))
            Assert.Throws<IOException>(() => AssertNotHeldOpen(path));
        AssertNotHeldOpen(path);
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(7)]
    public void FileShorterThanEightBytes(int length) => Rejects(Seq(length), fragment: "shorter than the 8-byte");

    [TestCase(3ul)]
    [TestCase(64ul)]
    [TestCase(99_999_999ul)]
    public void HeaderLengthLargerThanFile(ulong n)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        Rejects(Raw(n, Encoding.ASCII.GetBytes("{}"), []), fragment: "larger than the 2 bytes");
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(1_000_000), "nothing of size N allocated");
    }

    [TestCase(100_000_001ul)]
    [TestCase(1ul << 63)]
    [TestCase(ulong.MaxValue)]
    public void HeaderLengthOverLimit(ulong n) => Rejects(Raw(n, Encoding.ASCII.GetBytes("{}      "), []), fragment: "exceeds the 100000000-byte limit");

    [Test]
    public void HeaderOverLimitRejectedEvenWhenFileIsLargeEnough()
    {
        // A sparse 200 MB file whose prefix claims 100,000,008 bytes: the limit must win before any read or allocation.
        string path = Path.Combine(Dir, "big.safetensors");
        using (var s = new FileStream(path, FileMode.CreateNew))
        {
            s.Write(U64(100_000_008));
            s.Write("{}"u8);
            s.SetLength(200_000_016);
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path))!;
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(1_000_000));
        Assert.That(e.Message, Does.StartWith(path).And.Contain("limit"));
        AssertNotHeldOpen(path);
    }

    [Test]
    public void HeaderNotUtf8()
    {
        byte[] header = [.. "{\"a"u8, 0xC3, 0x28, .. "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}   "u8];
        Rejects(Raw((ulong)header.Length, header, [7]), fragment: "UTF-8");
    }

    [Test]
    public void HeaderWithOverlongUtf8Encoding() =>
        Rejects(Raw(8, [(byte)'{', (byte)'}', 0xC0, 0xA0, 0x20, 0x20, 0x20, 0x20], []), fragment: "UTF-8");

    [TestCase(" {}")]
    [TestCase("\n{}")]
    [TestCase("\uFEFF{}")]
    public void HeaderNotStartingWithBrace(string header) => Rejects(Build(header, []), fragment: "does not start with '{'");

    [Test]
    public void EmptyHeader() => Rejects(Raw(0, [], []), fragment: "does not start with '{'");

    // A JSON value that is not an object cannot start with '{', so this is caught by the first-byte check.
    [TestCase("[]")]
    [TestCase("\"{}\"")]
    [TestCase("123")]
    [TestCase("null")]
    public void TopLevelNotAnObject(string header) => Rejects(Build(header, []), fragment: "does not start with '{'");

    [TestCase("{\"a\":")]
    [TestCase("{\"a\":{}} x")]
    [TestCase("{} {}")]
    [TestCase("{,}")]
    [TestCase("{\"a\":1,}")]
    [TestCase("{/*c*/}")]
    [TestCase("{'a':1}")]
    public void InvalidJson(string header) => Rejects(Build(header, []), fragment: "not valid JSON");

    [Test]
    public void NestingDeeperThanParserLimit() =>
        Rejects(Build("{\"a\":" + new string('[', 1000) + new string(']', 1000) + "}", []), fragment: "not valid JSON");

    static IEnumerable<TestCaseData> MalformedEntries()
    {
        TestCaseData Case(string entry, string fragment, string label) =>
            new TestCaseData("{\"t\":" + entry + "}", fragment).SetName("MalformedEntry_" + label);
        yield return Case("5", "not an object", "Number");
        yield return Case("[1]", "not an object", "Array");
        yield return Case("null", "not an object", "Null");
        yield return Case("\"x\"", "not an object", "String");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1]}", "missing field 'data_offsets'", "MissingOffsets");
        yield return Case("{\"shape\":[1],\"data_offsets\":[0,1]}", "missing field 'dtype'", "MissingDtype");
        yield return Case("{\"dtype\":\"U8\",\"data_offsets\":[0,1]}", "missing field 'shape'", "MissingShape");
        yield return Case("{}", "missing field", "Empty");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}", "unexpected field 'extra'", "ExtraField");
        yield return Case("{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", "duplicate field 'dtype'", "DuplicateField");
        yield return Case("{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}", "not a string", "DtypeNumber");
        yield return Case("{\"dtype\":\"U8\",\"shape\":\"1\",\"data_offsets\":[0,1]}", "shape must be", "ShapeString");
        yield return Case("{\"dtype\":\"U8\",\"shape\":{},\"data_offsets\":[0,1]}", "shape must be", "ShapeObject");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}", "shape must be", "ShapeNegative");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}", "shape must be", "ShapeFraction");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1e0],\"data_offsets\":[0,1]}", "shape must be", "ShapeExponent");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[null],\"data_offsets\":[0,1]}", "shape must be", "ShapeNull");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[[1]],\"data_offsets\":[0,1]}", "shape must be", "ShapeNested");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}", "shape must be", "ShapeQuoted");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1]}", "data_offsets must be", "OffsetsOne");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}", "data_offsets must be", "OffsetsThree");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}", "data_offsets must be", "OffsetsNegative");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.5]}", "data_offsets must be", "OffsetsFraction");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":\"0,1\"}", "data_offsets must be", "OffsetsString");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}", "data_offsets must be", "OffsetsPastU64");
        yield return Case("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,0]}", "begin > end", "OffsetsReversed");
    }

    [TestCaseSource(nameof(MalformedEntries))]
    public void MalformedEntry(string header, string fragment) => Rejects(Build(header, [9]), "t", fragment);

    [TestCase("F33")]
    [TestCase("f32")]
    [TestCase("U4")]
    [TestCase("")]
    [TestCase("F32 ")]
    public void UnknownDType(string dtype) =>
        Rejects(Build($"{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":[1],\"data_offsets\":[0,1]}}}}", [1]), "t", $"unknown dtype '{dtype}'");

    [Test]
    public void DuplicateTensorNames() =>
        Rejects(Build("{\"t\":" + U8One + ",\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", [1, 2]), "t", "duplicate");

    [Test]
    public void DuplicateTensorNamesSpelledWithEscapes() =>
        Rejects(Build("{\"t\":" + U8One + ",\"\\u0074\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", [1, 2]), "t", "duplicate");

    [Test]
    public void LoneSurrogateEscapeInName() =>
        Rejects(Build("{\"\\ud800\":" + U8One + "}", [1]), fragment: "not valid Unicode");

    [TestCase("U8", "[4294967296,4294967296]")]
    [TestCase("F32", "[4611686018427387904]")]
    [TestCase("U8", "[18446744073709551615]")]
    [TestCase("F64", "[65536,65536,65536,65536]")]
    public void ShapeByteCountOverflows(string dtype, string shape) =>
        Rejects(Build($"{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[0,1]}}}}", [1]), "t", "overflows");

    [TestCase("F32", "[2]", "[0,4]")]
    [TestCase("U8", "[]", "[0,0]")]
    [TestCase("U8", "[0]", "[0,1]")]
    [TestCase("BF16", "[3]", "[0,3]")]
    public void ShapeDisagreesWithOffsets(string dtype, string shape, string offsets) =>
        Rejects(Build($"{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}", [1, 2, 3, 4]), "t", "needs");

    [Test]
    public void OffsetsBeyondDataBuffer() =>
        Rejects(Build("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", [1, 2]), "t", "beyond the 2-byte data buffer");

    [Test]
    public void HugeOffsetsBeyondDataBuffer() =>
        Rejects(Build("{\"t\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[18446744073709551610,18446744073709551615]}}", [1]), "t", "beyond");

    [Test]
    public void OverlappingTensors()
    {
        var e = Rejects(Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                            + "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", Seq(6)), "b", "overlap");
        Assert.That(e.Message, Does.Contain("'a'"));
    }

    [Test]
    public void IdenticalRangesOverlap() =>
        Rejects(Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                    + "\"b\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[0,2]}}", Seq(2)), fragment: "overlap");

    [Test]
    public void ZeroLengthTensorInsideAnotherOverlaps() =>
        Rejects(Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    + "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}", Seq(4)), "z", "overlap");

    [Test]
    public void HoleBetweenTensors()
    {
        var e = Rejects(Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                            + "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", Seq(6)), "b", "hole of 2 bytes");
        Assert.That(e.Message, Does.Contain("'a'"));
    }

    [Test]
    public void FirstTensorNotAtZero() =>
        Rejects(Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", Seq(4)), "a", "starts at data offset 2, not 0");

    [Test]
    public void BytesPastLastTensor() =>
        Rejects(Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", Seq(3)), "a", "1 bytes past the end");

    [Test]
    public void DataButNoTensors() => Rejects(Build("{}", Seq(8)), fragment: "no tensors but the data buffer has 8 bytes");

    [TestCase("5", "not an object")]
    [TestCase("[]", "not an object")]
    [TestCase("null", "not an object")]
    [TestCase("\"pt\"", "not an object")]
    [TestCase("{\"k\":1}", "not a string")]
    [TestCase("{\"k\":null}", "not a string")]
    [TestCase("{\"k\":{\"x\":\"y\"}}", "not a string")]
    [TestCase("{\"k\":[\"v\"]}", "not a string")]
    [TestCase("{\"k\":\"v\",\"k\":\"w\"}", "duplicate key 'k'")]
    public void MetadataNotStringToString(string metadata, string fragment) =>
        Rejects(Build("{\"__metadata__\":" + metadata + ",\"t\":" + U8One + "}", [1]), fragment: fragment);

    [Test]
    public void MetadataTwice() =>
        Rejects(Build("{\"__metadata__\":{},\"__metadata__\":{\"a\":\"b\"}}", []), "__metadata__", "duplicate");

    // ---- edges that are valid ----

    [Test]
    public void ZeroTensorsIsValid()
    {
        using var f = SafeTensorsFile.Open(WriteFile("empty.safetensors", Build("{}", [])));
        Assert.That(f.Tensors, Is.Empty);
        Assert.That(f.DataLength, Is.Zero);
    }

    [Test]
    public void ZeroLengthTensorsAtBufferEndAreValid()
    {
        using var f = SafeTensorsFile.Open(WriteFile("z.safetensors",
            Build("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                + "\"z1\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[2,2]},"
                + "\"z0\":{\"dtype\":\"I64\",\"shape\":[5,0],\"data_offsets\":[0,0]}}", Seq(2))));
        Assert.That(f.Tensors, Has.Count.EqualTo(3));
        Assert.That(f.GetBytes("z1").Length + f.GetBytes("z0").Length, Is.Zero);
        Assert.That(f.GetBytes("a").ToArray(), Is.EqualTo(Seq(2)));
    }
}
