using System.Buffers.Binary;
using System.Text;
using NativeLora.IO;

namespace NativeLora.Gguf;

/// <summary>
/// A read-only, memory-mapped GGUF file (versions 2 and 3, little-endian; ggml docs/gguf.md).
/// Everything before the tensor data is parsed and validated on Open against the file's length:
/// every count and length is checked against the bytes that remain before anything of that size is
/// allocated, so a hostile file costs at most a small multiple of its own size in memory. Rules
/// beyond the spec follow ggml's reader (gguf.cpp): non-empty unique keys, general.alignment a u32
/// power of two, tensor names under 64 bytes, at most 4 dimensions, rows a whole number of blocks.
/// Tensors may be in any order but must be aligned, inside the file and not overlap.
/// Spans handed out are valid only until Dispose.
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    public const int MaxDimensions = 4;
    /// <summary>ggml's GGUF_MAX_STRING_LENGTH (1 GiB).</summary>
    public const long MaxStringBytes = 1L << 30;

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    readonly ReadOnlyMapping _mapping;
    readonly byte* _base;
    readonly Dictionary<string, GgufValue> _metadataByKey;
    readonly Dictionary<string, GgufTensorInfo> _tensorsByName;

    public string Path { get; }
    public uint Version { get; }
    public uint Alignment { get; }
    /// <summary>File offset where the data section starts (tensor offsets are relative to it).</summary>
    public long DataOffset { get; }
    /// <summary>Metadata in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata { get; }
    /// <summary>Tensor infos in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    GgufFile(ReadOnlyMapping mapping, Header h)
    {
        Path = mapping.Path; _mapping = mapping; _base = mapping.Pointer;
        Version = h.Version; Alignment = h.Alignment; DataOffset = h.DataOffset;
        Metadata = h.Metadata; Tensors = h.Tensors;
        _metadataByKey = h.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        _tensorsByName = h.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    sealed record Header(uint Version, uint Alignment, long DataOffset, List<KeyValuePair<string, GgufValue>> Metadata, List<GgufTensorInfo> Tensors);

    public static GgufFile Open(string path)
    {
        var mapping = ReadOnlyMapping.Open(path, 24, length => new GgufFormatException(path,
            $"file is {length} bytes, shorter than the 24-byte GGUF header (magic, version, tensor count, metadata count)"));
        try { return new GgufFile(mapping, Parse(path, mapping.Pointer, mapping.Length)); }
        catch { mapping.Dispose(); throw; } // never leak the handle on a bad file
    }

    /// <summary>A bounds-checked little-endian cursor over the mapped file.</summary>
    struct Cursor(string path, byte* data, long length)
    {
        public long Position;
        public readonly long Remaining => length - Position;
        public readonly string Path => path;

        ReadOnlySpan<byte> Take(int n, string what, string? item)
        {
            if (n > Remaining)
                throw new GgufFormatException(path, $"file ends inside {what} at offset {Position} (needs {n} bytes, {Remaining} left)", item);
            var s = new ReadOnlySpan<byte>(data + Position, n);
            Position += n;
            return s;
        }

        public byte U8(string what, string? item) => Take(1, what, item)[0];
        public ushort U16(string what, string? item) => BinaryPrimitives.ReadUInt16LittleEndian(Take(2, what, item));
        public uint U32(string what, string? item) => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, what, item));
        public ulong U64(string what, string? item) => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, what, item));

        public string String(string what, string? item, long maxBytes = MaxStringBytes)
        {
            ulong n = U64($"the length of {what}", item);
            if (n > (ulong)maxBytes)
                throw new GgufFormatException(path, $"{what} is {n} bytes long, over the {maxBytes}-byte limit", item);
            if (n > (ulong)Remaining) // checked before anything of size n is allocated
                throw new GgufFormatException(path, $"{what} claims {n} bytes but only {Remaining} remain in the file", item);
            var bytes = Take((int)n, what, item);
            try { return StrictUtf8.GetString(bytes); }
            catch (DecoderFallbackException e) { throw new GgufFormatException(path, $"{what} is not valid UTF-8", item, e); }
        }
    }

    static Header Parse(string path, byte* data, long length)
    {
        var c = new Cursor(path, data, length);
        if (data[0] != 'G' || data[1] != 'G' || data[2] != 'U' || data[3] != 'F')
            throw new GgufFormatException(path, $"bad magic {data[0]:x2} {data[1]:x2} {data[2]:x2} {data[3]:x2}, expected 'GGUF' (47 47 55 46)");
        c.Position = 4;
        uint version = c.U32("the version", null);
        if (version != 2 && version != 3)
        {
            if (version != 0 && (version & 0xFFFF) == 0)
                throw new GgufFormatException(path, $"version 0x{version:x8} looks byte-swapped: big-endian GGUF files are not supported");
            throw new GgufFormatException(path, version == 1 ? "GGUF version 1 is not supported (32-bit counts; ggml dropped it)" : $"unsupported GGUF version {version} (supported: 2, 3)");
        }
        ulong tensorCount = c.U64("the tensor count", null);
        ulong kvCount = c.U64("the metadata count", null);
        // Smallest encodings: a KV is a key length (8) + 1 key byte + type (4) + a 1-byte value; a tensor info
        // is a name length (8) + n_dims (4) + type (4) + offset (8). Counts that cannot fit are refused before any list is sized.
        if (kvCount > (ulong)c.Remaining / 14)
            throw new GgufFormatException(path, $"metadata count {kvCount} cannot fit in the {c.Remaining} bytes after the header");
        if (tensorCount > (ulong)c.Remaining / 24)
            throw new GgufFormatException(path, $"tensor count {tensorCount} cannot fit in the {c.Remaining} bytes after the header");

        var metadata = new List<KeyValuePair<string, GgufValue>>((int)Math.Min(kvCount, 4096));
        var keys = new HashSet<string>(StringComparer.Ordinal);
        for (ulong i = 0; i < kvCount; i++)
        {
            string key = c.String($"metadata key {i}", null, GgufWriter.MaxKeyBytes);
            if (key.Length == 0) throw new GgufFormatException(path, $"metadata key {i} is empty");
            if (!keys.Add(key)) throw new GgufFormatException(path, "duplicate metadata key", key);
            metadata.Add(new(key, ReadValue(ref c, key)));
        }

        uint alignment = GgufWriter.DefaultAlignment;
        if (keys.Contains(GgufWriter.AlignmentKey))
        {
            var a = metadata.First(kv => kv.Key == GgufWriter.AlignmentKey).Value;
            if (a.Type != GgufValueType.UInt32)
                throw new GgufFormatException(path, $"must be a UInt32, is {a.Describe()}", GgufWriter.AlignmentKey);
            alignment = a.AsUInt32();
            if (alignment == 0 || (alignment & (alignment - 1)) != 0)
                throw new GgufFormatException(path, $"alignment {alignment} is not a power of two", GgufWriter.AlignmentKey);
        }

        var tensors = new List<GgufTensorInfo>((int)Math.Min(tensorCount, 4096));
        var names = new HashSet<string>(StringComparer.Ordinal);
        var rawOffsets = new List<ulong>((int)Math.Min(tensorCount, 4096));
        for (ulong i = 0; i < tensorCount; i++)
        {
            string name = c.String($"the name of tensor {i}", null, GgufWriter.MaxTensorNameBytes);
            string item = $"tensor '{name}'";
            if (name.Length == 0) throw new GgufFormatException(path, $"tensor {i} has an empty name");
            if (!names.Add(name)) throw new GgufFormatException(path, "duplicate tensor name", item);
            uint nDims = c.U32("the dimension count", item);
            if (nDims > MaxDimensions)
                throw new GgufFormatException(path, $"has {nDims} dimensions, more than ggml's {MaxDimensions}", item);
            var dims = new long[nDims];
            long elements = 1;
            for (int d = 0; d < nDims; d++)
            {
                ulong v = c.U64($"dimension {d}", item);
                if (v > long.MaxValue) throw new GgufFormatException(path, $"dimension {d} is {v}, over 2^63 - 1", item);
                dims[d] = (long)v;
            }
            foreach (var d in dims)
                if (d != 0 && elements > long.MaxValue / d)
                    throw new GgufFormatException(path, $"dimensions [{string.Join(", ", dims)}] overflow a 64-bit element count", item);
                else elements *= d;
            uint typeId = c.U32("the tensor type", item);
            var type = (GgmlType)typeId;
            if (!GgmlTypes.TryGetLayout(type, out int block, out int typeSize))
                throw new GgufFormatException(path, $"unknown ggml type {typeId}", item);
            long rowLength = nDims == 0 ? 1 : dims[0];
            if (rowLength % block != 0)
                throw new GgufFormatException(path, $"rows of {rowLength} elements are not a whole number of {type} blocks of {block}", item);
            if (elements / block > long.MaxValue / typeSize)
                throw new GgufFormatException(path, $"dimensions [{string.Join(", ", dims)}] of {type} overflow a 64-bit byte count", item);
            ulong offset = c.U64("the data offset", item);
            rawOffsets.Add(offset);
            tensors.Add(new GgufTensorInfo(name, dims, type, offset > long.MaxValue ? -1 : (long)offset, elements / block * typeSize));
        }

        // The data section starts at the next multiple of the alignment (ggml pads even when there are no tensors; we accept its absence then).
        long dataOffset = (c.Position + alignment - 1) / alignment * alignment;
        if (tensors.Count > 0 && dataOffset > length)
            throw new GgufFormatException(path, $"file ends at {length}, before the data section at {dataOffset}");
        long dataLength = Math.Max(0, length - dataOffset);
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            string item = $"tensor '{t.Name}'";
            if (rawOffsets[i] % alignment != 0)
                throw new GgufFormatException(path, $"data offset {rawOffsets[i]} is not a multiple of the alignment {alignment}", item);
            if (rawOffsets[i] > (ulong)dataLength || (ulong)t.ByteLength > (ulong)dataLength - rawOffsets[i])
                throw new GgufFormatException(path, $"data [{rawOffsets[i]}, +{t.ByteLength}) extends beyond the {dataLength}-byte data section (file truncated?)", item);
        }
        var byOffset = tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.Offset).ThenBy(t => t.Name, StringComparer.Ordinal).ToList();
        for (int i = 1; i < byOffset.Count; i++)
        {
            var prev = byOffset[i - 1];
            var t = byOffset[i];
            if (t.Offset < prev.Offset + prev.ByteLength)
                throw new GgufFormatException(path, $"data [{t.Offset}, {t.Offset + t.ByteLength}) overlaps tensor '{prev.Name}' [{prev.Offset}, {prev.Offset + prev.ByteLength})", $"tensor '{t.Name}'");
        }
        return new Header(version, alignment, dataOffset, metadata, tensors);
    }

    static GgufValue ReadValue(ref Cursor c, string key)
    {
        uint typeId = c.U32("the value type", key);
        if (typeId > (uint)GgufValueType.Float64)
            throw new GgufFormatException(c.Path, $"unknown value type {typeId}", key);
        var type = (GgufValueType)typeId;
        if (type != GgufValueType.Array) return ReadScalar(ref c, type, key);

        uint elementId = c.U32("the array element type", key);
        if (elementId > (uint)GgufValueType.Float64)
            throw new GgufFormatException(c.Path, $"unknown array element type {elementId}", key);
        var element = (GgufValueType)elementId;
        if (element == GgufValueType.Array)
            throw new GgufFormatException(c.Path, "arrays of arrays are not supported (ggml's reader rejects them too)", key);
        ulong count = c.U64("the array length", key);
        // Each element takes at least its scalar size (8 for a string's length prefix): check before allocating.
        int minSize = element == GgufValueType.String ? 8 : GgufValue.ScalarSize(element);
        if (count > (ulong)c.Remaining / (ulong)minSize)
            throw new GgufFormatException(c.Path, $"array of {count} {element} cannot fit in the {c.Remaining} bytes that remain", key);
        if (count > (ulong)Array.MaxLength) throw new GgufFormatException(c.Path, $"array of {count} elements is too long for this reader", key);
        int n = (int)count;
        switch (element)
        {
            case GgufValueType.UInt8: { var a = new byte[n]; for (int i = 0; i < n; i++) a[i] = c.U8("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.Int8: { var a = new sbyte[n]; for (int i = 0; i < n; i++) a[i] = (sbyte)c.U8("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.UInt16: { var a = new ushort[n]; for (int i = 0; i < n; i++) a[i] = c.U16("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.Int16: { var a = new short[n]; for (int i = 0; i < n; i++) a[i] = (short)c.U16("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.UInt32: { var a = new uint[n]; for (int i = 0; i < n; i++) a[i] = c.U32("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.Int32: { var a = new int[n]; for (int i = 0; i < n; i++) a[i] = (int)c.U32("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.Float32: { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = BitConverter.UInt32BitsToSingle(c.U32("an array element", key)); return GgufValue.Array(a); }
            case GgufValueType.Bool: { var a = new bool[n]; for (int i = 0; i < n; i++) a[i] = Bool(ref c, key, i); return GgufValue.Array(a); }
            case GgufValueType.String: { var a = new string[n]; for (int i = 0; i < n; i++) a[i] = c.String($"array element {i}", key); return GgufValue.Array(a); }
            case GgufValueType.UInt64: { var a = new ulong[n]; for (int i = 0; i < n; i++) a[i] = c.U64("an array element", key); return GgufValue.Array(a); }
            case GgufValueType.Int64: { var a = new long[n]; for (int i = 0; i < n; i++) a[i] = (long)c.U64("an array element", key); return GgufValue.Array(a); }
            default: { var a = new double[n]; for (int i = 0; i < n; i++) a[i] = BitConverter.UInt64BitsToDouble(c.U64("an array element", key)); return GgufValue.Array(a); }
        }
    }

    static GgufValue ReadScalar(ref Cursor c, GgufValueType type, string key) => type switch
    {
        GgufValueType.UInt8 => GgufValue.U8(c.U8("the value", key)),
        GgufValueType.Int8 => GgufValue.I8((sbyte)c.U8("the value", key)),
        GgufValueType.UInt16 => GgufValue.U16(c.U16("the value", key)),
        GgufValueType.Int16 => GgufValue.I16((short)c.U16("the value", key)),
        GgufValueType.UInt32 => GgufValue.U32(c.U32("the value", key)),
        GgufValueType.Int32 => GgufValue.I32((int)c.U32("the value", key)),
        GgufValueType.Float32 => GgufValue.F32(BitConverter.UInt32BitsToSingle(c.U32("the value", key))),
        GgufValueType.Bool => GgufValue.Bool(Bool(ref c, key, -1)),
        GgufValueType.String => GgufValue.String(c.String("the string value", key)),
        GgufValueType.UInt64 => GgufValue.U64(c.U64("the value", key)),
        GgufValueType.Int64 => GgufValue.I64((long)c.U64("the value", key)),
        _ => GgufValue.F64(BitConverter.UInt64BitsToDouble(c.U64("the value", key))),
    };

    // The spec: "1-byte value where 0 is false and 1 is true. Anything else is invalid".
    static bool Bool(ref Cursor c, string key, int index)
    {
        byte b = c.U8("a bool", key);
        if (b > 1) throw new GgufFormatException(c.Path, $"bool{(index >= 0 ? $" element {index}" : "")} is {b}, not 0 or 1", key);
        return b == 1;
    }

    // ---- lookups -------------------------------------------------------------------------

    public bool TryGetValue(string key, out GgufValue value)
    {
        ThrowIfDisposed();
        return _metadataByKey.TryGetValue(key, out value!);
    }

    public GgufValue GetValue(string key) =>
        TryGetValue(key, out var v) ? v : throw new KeyNotFoundException($"{Path}: no metadata key '{key}'");

    public bool TryGetTensor(string name, out GgufTensorInfo info)
    {
        ThrowIfDisposed();
        return _tensorsByName.TryGetValue(name, out info!);
    }

    public GgufTensorInfo GetTensor(string name) =>
        TryGetTensor(name, out var t) ? t : throw new KeyNotFoundException($"{Path}: no tensor named '{name}' ({Tensors.Count} tensors in file)");

    /// <summary>The tensor's encoded bytes, zero-copy.</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var t = GetTensor(name);
        if (t.ByteLength > int.MaxValue)
            throw new InvalidOperationException($"{Path}: tensor '{name}' is {t.ByteLength} bytes, more than a span can hold; use GetPointer");
        return new ReadOnlySpan<byte>(_base + DataOffset + t.Offset, (int)t.ByteLength);
    }

    /// <summary>Pointer to the tensor's first byte, for tensors over 2 GiB. Valid until Dispose.</summary>
    public byte* GetPointer(string name) => _base + DataOffset + GetTensor(name).Offset;

    /// <summary>Decodes a tensor to f32 (the types <see cref="GgmlQuants.CanDecode"/> accepts).</summary>
    public float[] ReadAsFloat32(string name)
    {
        var t = GetTensor(name);
        if (!GgmlQuants.CanDecode(t.Type))
            throw new NotSupportedException($"{Path}: tensor '{name}': cannot decode {t.Type} to float32");
        if (t.ElementCount > Array.MaxLength)
            throw new InvalidOperationException($"{Path}: tensor '{name}' has {t.ElementCount} elements, more than a float[] can hold");
        var result = new float[t.ElementCount];
        GgmlQuants.Decode(t.Type, GetBytes(name), result);
        return result;
    }

    void ThrowIfDisposed() => _mapping.ThrowIfDisposed(this);

    public void Dispose() => _mapping.Dispose();
}
