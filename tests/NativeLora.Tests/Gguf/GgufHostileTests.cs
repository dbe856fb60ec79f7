using NativeLora.Gguf;
using NativeLora.Tests.SafeTensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Gguf;

/// <summary>One test per way a GGUF file can be malformed: each must raise GgufFormatException whose
/// message starts with the path (and names the key or tensor), without allocating anything the size
/// of a claimed count, and must release the file.</summary>
public class GgufHostileTests : TempDirTests
{
    GgufFormatException Rejects(byte[] bytes, string fragment, string? item = null)
    {
        string path = WriteFile("bad.gguf", bytes);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<GgufFormatException>(() => GgufFile.Open(path).Dispose())!;
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(2_000_000), "nothing sized by a hostile count was allocated");
        Assert.That(e.Message, Does.StartWith(path + ":"));
        Assert.That(e.FilePath, Is.EqualTo(path));
        Assert.That(e.Message, Does.Contain(fragment));
        if (item is not null)
        {
            Assert.That(e.Item, Is.EqualTo(item));
            Assert.That(e.Message, Does.Contain(item));
        }
        using (new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None)) { } // not held open
        return e;
    }

    static GgufTestBytes Empty() => new GgufTestBytes().Header(0, 0);

    [TestCase(0)]
    [TestCase(4)]
    [TestCase(23)]
    public void FileShorterThanTheHeader(int n) => Rejects(Empty().ToArray()[..n], "shorter than the 24-byte GGUF header");

    [Test]
    public void EmptyHeaderOnlyFileIsValid()
    {
        using var f = GgufFile.Open(WriteFile("ok.gguf", Empty().ToArray()));
        Assert.That(f.Tensors, Is.Empty);
        Assert.That(f.Metadata, Is.Empty);
    }

    [Test]
    public void BadMagic()
    {
        var b = Empty().ToArray();
        b[3] = (byte)'J';
        Rejects(b, "bad magic 47 47 55 4a");
    }

    [TestCase(0u, "unsupported GGUF version 0")]
    [TestCase(1u, "version 1 is not supported")]
    [TestCase(4u, "unsupported GGUF version 4")]
    [TestCase(0x03000000u, "byte-swapped")]
    public void UnsupportedVersion(uint version, string fragment) => Rejects(new GgufTestBytes().Header(0, 0, version).ToArray(), fragment);

    [TestCase(ulong.MaxValue)]
    [TestCase(1ul << 40)]
    [TestCase(3ul)]
    public void KvCountThatCannotFit(ulong count) => Rejects(new GgufTestBytes().Header(0, count).Zeros(30).ToArray(), $"metadata count {count} cannot fit");

    [TestCase(ulong.MaxValue)]
    [TestCase(2ul)]
    public void TensorCountThatCannotFit(ulong count) => Rejects(new GgufTestBytes().Header(count, 0).Zeros(40).ToArray(), $"tensor count {count} cannot fit");

    [TestCase(ulong.MaxValue)]
    [TestCase(1000ul)]
    public void KeyLengthBeyondTheFile(ulong n) => Rejects(new GgufTestBytes().Header(0, 1).U64(n).Zeros(20).ToArray(), "metadata key 0");

    [Test]
    public void KeyOverTheSpecLimit() => Rejects(new GgufTestBytes().Header(0, 1).U64(70000).Zeros(70010).ToArray(), "over the 65535-byte limit");

    [Test]
    public void EmptyKey() => Rejects(new GgufTestBytes().Header(0, 1).Str("").U32(0).U8(1).Zeros(4).ToArray(), "metadata key 0 is empty");

    [Test]
    public void DuplicateKey() =>
        Rejects(new GgufTestBytes().Header(0, 2).KvU32("a.b", 1).KvU32("a.b", 2).ToArray(), "duplicate metadata key", "a.b");

    [Test]
    public void KeyNotUtf8() => Rejects(new GgufTestBytes().Header(0, 1).StrBytes([0x61, 0xff]).U32(0).U8(1).Zeros(4).ToArray(), "not valid UTF-8");

    [TestCase(13u)]
    [TestCase(0xFFFFFFFFu)]
    public void UnknownValueType(uint type) =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(type).Zeros(8).ToArray(), $"unknown value type {type}", "k");

    [Test]
    public void UnknownArrayElementType() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(9).U32(42).U64(0).ToArray(), "unknown array element type 42", "k");

    [Test]
    public void NestedArray() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(9).U32(9).U64(0).ToArray(), "arrays of arrays", "k");

    [TestCase(4u, 1ul << 62)]
    [TestCase(8u, ulong.MaxValue)]
    [TestCase(12u, 5ul)]
    [TestCase(0u, 100ul)]
    public void ArrayLongerThanTheFile(uint element, ulong count) =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(9).U32(element).U64(count).Zeros(16).ToArray(), $"array of {count}", "k");

    [Test]
    public void StringOverGgmlsLimit() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(8).U64((1ul << 30) + 1).Zeros(8).ToArray(), "over the 1073741824-byte limit", "k");

    [Test]
    public void StringValueLongerThanTheFile() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(8).U64(1ul << 29).Zeros(8).ToArray(), "claims 536870912 bytes but only 8 remain", "k");

    [Test]
    public void StringInArrayTruncated() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(9).U32(8).U64(2).Str("ok").U64(50).Zeros(3).ToArray(), "array element 1", "k");

    [Test]
    public void TruncatedScalar() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(10).Zeros(3).ToArray(), "file ends inside the value", "k");

    [Test]
    public void BoolThatIsNeitherZeroNorOne() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("k").U32(7).U8(2).ToArray(), "bool is 2", "k");

    [Test]
    public void AlignmentOfTheWrongType() =>
        Rejects(new GgufTestBytes().Header(0, 1).Str("general.alignment").U32(10).U64(32).ToArray(), "must be a UInt32", "general.alignment");

    [TestCase(0u)]
    [TestCase(48u)]
    public void AlignmentNotAPowerOfTwo(uint a) =>
        Rejects(new GgufTestBytes().Header(0, 1).KvU32("general.alignment", a).ToArray(), $"alignment {a} is not a power of two", "general.alignment");

    static GgufTestBytes OneTensor(string name, uint type, ulong offset, ulong[] dims, int data) =>
        new GgufTestBytes().Header(1, 0).Tensor(name, type, offset, dims).Pad().Zeros(data);

    [Test]
    public void TensorNameTooLongForGgml() => Rejects(OneTensor(new string('a', 64), 0, 0, [1], 4).ToArray(), "over the 63-byte limit");

    [Test]
    public void EmptyTensorName() => Rejects(OneTensor("", 0, 0, [1], 4).ToArray(), "tensor 0 has an empty name");

    [Test]
    public void DuplicateTensorName() =>
        Rejects(new GgufTestBytes().Header(2, 0).Tensor("w", 0, 0, 1).Tensor("w", 0, 32, 1).Pad().Zeros(64).ToArray(), "duplicate tensor name", "tensor 'w'");

    [TestCase(5u)]
    [TestCase(0xFFFFFFFFu)]
    public void TooManyDimensions(uint n) =>
        Rejects(new GgufTestBytes().Header(1, 0).Str("w").U32(n).Zeros(64).ToArray(), $"has {n} dimensions", "tensor 'w'");

    [Test]
    public void DimensionOverInt64() => Rejects(OneTensor("w", 0, 0, [1ul << 63], 4).ToArray(), "over 2^63 - 1", "tensor 'w'");

    [Test]
    public void ElementCountOverflows() => Rejects(OneTensor("w", 0, 0, [1ul << 32, 1ul << 32], 4).ToArray(), "overflow a 64-bit element count", "tensor 'w'");

    [Test]
    public void ByteCountOverflows() => Rejects(OneTensor("w", 0, 0, [1ul << 31, 1ul << 31], 4).ToArray(), "overflow a 64-bit byte count", "tensor 'w'");

    [TestCase(4u)]   // removed Q4_2
    [TestCase(31u)]  // removed Q4_0_4_4
    [TestCase(40u)]
    [TestCase(0x80000000u)]
    public void UnknownTensorType(uint type) => Rejects(OneTensor("w", type, 0, [256], 1024).ToArray(), $"unknown ggml type {type}", "tensor 'w'");

    [Test]
    public void RowNotAWholeNumberOfBlocks() => Rejects(OneTensor("w", 12, 0, [100, 2], 1024).ToArray(), "not a whole number of Q4_K blocks of 256", "tensor 'w'");

    [Test]
    public void OffsetNotAligned() => Rejects(OneTensor("w", 0, 4, [1], 64).ToArray(), "data offset 4 is not a multiple of the alignment 32", "tensor 'w'");

    [TestCase(0ul, 3)]                // 4 bytes needed, 3 present: truncated
    [TestCase(64ul, 32)]              // starts past the end
    [TestCase(ulong.MaxValue - 31, 32)] // offset + size wraps around
    public void TensorBeyondTheEnd(ulong offset, int data) => Rejects(OneTensor("w", 0, offset, [1], data).ToArray(), "extends beyond", "tensor 'w'");

    [Test]
    public void TruncatedBeforeTheDataSection() =>
        Rejects(new GgufTestBytes().Header(1, 0).Tensor("w", 0, 0, 0).ToArray(), "before the data section");

    [Test]
    public void TruncatedInsideTensorInfo() =>
        Rejects(new GgufTestBytes().Header(1, 0).Str("w").U32(2).U64(4).Zeros(3).ToArray(), "file ends inside dimension 1", "tensor 'w'");

    [Test]
    public void OverlappingTensors() =>
        Rejects(new GgufTestBytes().Header(2, 0).Tensor("a", 0, 0, 16).Tensor("b", 0, 32, 16).Pad().Zeros(128).ToArray(),
                "overlaps tensor 'a'", "tensor 'b'");

    [Test]
    public void ZeroSizedTensorsMayShareAnOffset()
    {
        var b = new GgufTestBytes().Header(2, 0).Tensor("a", 0, 0, 0).Tensor("b", 0, 0, 4, 0).Pad();
        using var f = GgufFile.Open(WriteFile("z.gguf", b.ToArray()));
        Assert.That(f.ReadAsFloat32("a"), Is.Empty);
    }

    [Test]
    public void UnsupportedDecodeNamesFileAndTensor()
    {
        var b = OneTensor("w", 11, 0, [256], 110); // Q3_K: readable, not decodable here
        string path = WriteFile("q3.gguf", b.ToArray());
        using var f = GgufFile.Open(path);
        var e = Assert.Throws<NotSupportedException>(() => f.ReadAsFloat32("w"))!;
        Assert.That(e.Message, Does.StartWith(path).And.Contain("'w'"));
        Assert.That(f.GetBytes("w").Length, Is.EqualTo(110));
    }
}
