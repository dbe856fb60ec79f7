using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using NativeLora.IO;

namespace NativeLora.SafeTensors;

/// <summary>
/// A read-only, memory-mapped safetensors file. The header is validated completely on Open
/// (huggingface/safetensors README "Format" and the Rust crate's <c>read_metadata</c>/<c>validate</c>),
/// so every later lookup is in bounds. Tensor bytes are never copied except by ReadAsFloat32.
/// Spans and pointers handed out are valid only until Dispose. As with any mapping, another
/// process truncating the file while it is open makes later reads fault (SIGBUS).
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    /// <summary>The reference implementation's MAX_HEADER_SIZE.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    // Throwing decoder: the default UTF8Encoding silently replaces invalid bytes with U+FFFD.
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    readonly ReadOnlyMapping _mapping;
    readonly byte* _data;
    readonly SafeTensorInfo[] _tensors;
    readonly Dictionary<string, SafeTensorInfo> _byName;

    public string Path { get; }
    /// <summary>N, the JSON header length in bytes (padding included).</summary>
    public long HeaderLength { get; }
    public long DataLength { get; }
    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors => _tensors;
    /// <summary>The <c>__metadata__</c> entry; empty when absent.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafeTensorsFile(ReadOnlyMapping mapping, long headerLength, SafeTensorInfo[] tensors, Dictionary<string, string> metadata)
    {
        Path = mapping.Path; _mapping = mapping; _data = mapping.Pointer + 8 + headerLength;
        HeaderLength = headerLength; DataLength = mapping.Length - 8 - headerLength;
        _tensors = tensors;
        _byName = new Dictionary<string, SafeTensorInfo>(tensors.Length, StringComparer.Ordinal);
        foreach (var t in tensors) _byName.Add(t.Name, t);
        Metadata = metadata;
    }

    public static SafeTensorsFile Open(string path)
    {
        var mapping = ReadOnlyMapping.Open(path, 8, length => new SafeTensorsFormatException(path,
            $"file is {length} bytes, shorter than the 8-byte header length prefix"));
        try
        {
            var (n, tensors, metadata) = ParseHeader(path, mapping.Pointer, mapping.Length);
            return new SafeTensorsFile(mapping, n, tensors, metadata);
        }
        catch { mapping.Dispose(); throw; } // never leak the handle on a bad file
    }

    static (long n, SafeTensorInfo[] tensors, Dictionary<string, string> metadata) ParseHeader(string path, byte* file, long fileLength)
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(file, 8));
        // Both bounds are checked before anything of size N is allocated.
        if (n > MaxHeaderBytes)
            throw new SafeTensorsFormatException(path, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit");
        if (n > (ulong)(fileLength - 8))
            throw new SafeTensorsFormatException(path, $"header length {n} is larger than the {fileLength - 8} bytes after the length prefix");
        long dataLength = fileLength - 8 - (long)n;

        var headerSpan = new ReadOnlySpan<byte>(file + 8, (int)n);
        try { StrictUtf8.GetCharCount(headerSpan); }
        catch (DecoderFallbackException e) { throw new SafeTensorsFormatException(path, "header is not valid UTF-8", inner: e); }
        // The reference crate still has this check commented out ("add when we move to 0.4.0"); the README requires it.
        if (n == 0 || headerSpan[0] != (byte)'{')
            throw new SafeTensorsFormatException(path, "header does not start with '{'");

        JsonDocument doc;
        try { doc = JsonDocument.Parse(headerSpan.ToArray()); } // copy is bounded by the 100 MB limit
        catch (JsonException e) { throw new SafeTensorsFormatException(path, $"header is not valid JSON: {e.Message}", inner: e); }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new SafeTensorsFormatException(path, $"header top level is a JSON {root.ValueKind}, not an object");

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var tensors = new List<SafeTensorInfo>();
            // JsonDocument keeps duplicate keys, so they are caught here (the format disallows them).
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in root.EnumerateObject())
            {
                string name = NameOf(path, prop, null);
                if (!seen.Add(name))
                    throw new SafeTensorsFormatException(path, "duplicate key in header", name);
                if (name == "__metadata__")
                    ReadMetadata(path, prop.Value, metadata);
                else
                    tensors.Add(ReadEntry(path, name, prop.Value, dataLength));
            }
            CheckTiling(path, tensors, dataLength);
            return ((long)n, tensors.ToArray(), metadata);
        }
    }

    static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> into)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new SafeTensorsFormatException(path, $"__metadata__ is a JSON {value.ValueKind}, not an object of strings");
        foreach (var prop in value.EnumerateObject())
        {
            string key = NameOf(path, prop, "__metadata__");
            if (prop.Value.ValueKind != JsonValueKind.String)
                throw new SafeTensorsFormatException(path, $"__metadata__ value for '{key}' is a JSON {prop.Value.ValueKind}, not a string");
            if (!into.TryAdd(key, StringOf(path, prop.Value, "__metadata__")))
                throw new SafeTensorsFormatException(path, $"duplicate key '{key}' in __metadata__");
        }
    }

    static SafeTensorInfo ReadEntry(string path, string name, JsonElement entry, long dataLength)
    {
        if (entry.ValueKind != JsonValueKind.Object)
            throw new SafeTensorsFormatException(path, $"entry is a JSON {entry.ValueKind}, not an object", name);
        JsonElement? dtypeEl = null, shapeEl = null, offsetsEl = null;
        foreach (var f in entry.EnumerateObject())
        {
            string field = NameOf(path, f, name);
            ref JsonElement? slot = ref dtypeEl;
            if (field == "dtype") slot = ref dtypeEl;
            else if (field == "shape") slot = ref shapeEl;
            else if (field == "data_offsets") slot = ref offsetsEl;
            else throw new SafeTensorsFormatException(path, $"unexpected field '{field}' (expected exactly dtype, shape, data_offsets)", name);
            if (slot is not null) throw new SafeTensorsFormatException(path, $"duplicate field '{field}'", name);
            slot = f.Value;
        }
        if (dtypeEl is null) throw new SafeTensorsFormatException(path, "missing field 'dtype'", name);
        if (shapeEl is null) throw new SafeTensorsFormatException(path, "missing field 'shape'", name);
        if (offsetsEl is null) throw new SafeTensorsFormatException(path, "missing field 'data_offsets'", name);

        if (dtypeEl.Value.ValueKind != JsonValueKind.String)
            throw new SafeTensorsFormatException(path, $"dtype is a JSON {dtypeEl.Value.ValueKind}, not a string", name);
        string dtypeText = StringOf(path, dtypeEl.Value, name);
        if (!SafeTensorsDTypes.TryParse(dtypeText, out var dtype))
            throw new SafeTensorsFormatException(path, $"unknown dtype '{dtypeText}'", name);

        ulong[] shapeU = ReadUInts(path, name, shapeEl.Value, "shape", -1);
        ulong[] offsets = ReadUInts(path, name, offsetsEl.Value, "data_offsets", 2);
        ulong begin = offsets[0], end = offsets[1];
        if (begin > end)
            throw new SafeTensorsFormatException(path, $"data_offsets [{begin}, {end}] has begin > end", name);

        // Same fold as the reference: elements = product(shape), bytes = elements * size, both checked.
        ulong bytes = 1;
        var shape = new long[shapeU.Length];
        for (int i = 0; i < shapeU.Length; i++)
        {
            if (shapeU[i] > long.MaxValue || !TryMul(bytes, shapeU[i], out bytes))
                throw new SafeTensorsFormatException(path, $"shape [{string.Join(", ", shapeU)}] overflows", name);
            shape[i] = (long)shapeU[i];
        }
        if (!TryMul(bytes, (ulong)dtype.ElementSize(), out bytes))
            throw new SafeTensorsFormatException(path, $"shape [{string.Join(", ", shapeU)}] × {dtype.ElementSize()} bytes overflows", name);
        if (bytes != end - begin)
            throw new SafeTensorsFormatException(path,
                $"shape [{string.Join(", ", shapeU)}] of {dtypeText} needs {bytes} bytes but data_offsets [{begin}, {end}] span {end - begin}", name);
        if (end > (ulong)dataLength)
            throw new SafeTensorsFormatException(path, $"data_offsets [{begin}, {end}] extend beyond the {dataLength}-byte data buffer", name);
        return new SafeTensorInfo(name, dtype, shape, (long)begin, (long)end);
    }

    /// <summary>
    /// The reference sorts entries by data_offsets and requires each to start where the previous
    /// ended, starting at 0, and the last to end exactly at the end of the file
    /// (Metadata::validate → InvalidOffset; read_metadata → MetadataIncompleteBuffer).
    /// Header order itself is free.
    /// </summary>
    static void CheckTiling(string path, List<SafeTensorInfo> tensors, long dataLength)
    {
        var byOffset = tensors.OrderBy(t => t.DataBegin).ThenBy(t => t.DataEnd).ToArray(); // stable: deterministic messages
        long expected = 0;
        SafeTensorInfo? previous = null;
        foreach (var t in byOffset)
        {
            if (t.DataBegin < expected)
                throw new SafeTensorsFormatException(path,
                    $"data_offsets [{t.DataBegin}, {t.DataEnd}] overlap tensor '{previous!.Name}' [{previous.DataBegin}, {previous.DataEnd}]", t.Name);
            if (t.DataBegin > expected)
                throw new SafeTensorsFormatException(path, previous is null
                    ? $"first tensor starts at data offset {t.DataBegin}, not 0"
                    : $"hole of {t.DataBegin - expected} bytes between tensor '{previous.Name}' (ends at {expected}) and this tensor (starts at {t.DataBegin})", t.Name);
            expected = t.DataEnd;
            previous = t;
        }
        if (expected != dataLength)
            throw new SafeTensorsFormatException(path, previous is null
                ? $"header lists no tensors but the data buffer has {dataLength} bytes"
                : $"data buffer has {dataLength - expected} bytes past the end of the last tensor", previous?.Name);
    }

    static ulong[] ReadUInts(string path, string name, JsonElement array, string field, int exactCount)
    {
        string expectation = exactCount < 0 ? "an array of non-negative integers" : $"an array of {exactCount} non-negative integers";
        if (array.ValueKind != JsonValueKind.Array || (exactCount >= 0 && array.GetArrayLength() != exactCount))
            throw new SafeTensorsFormatException(path, $"{field} must be {expectation}", name);
        var result = new ulong[array.GetArrayLength()];
        int i = 0;
        foreach (var item in array.EnumerateArray())
        {
            // TryGetUInt64 rejects negatives, fractions and exponents.
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetUInt64(out result[i]))
                throw new SafeTensorsFormatException(path, $"{field} must be {expectation}; element {i} is {item.GetRawText()}", name);
            i++;
        }
        return result;
    }

    static bool TryMul(ulong a, ulong b, out ulong product)
    {
        product = a * b;
        return a == 0 || product / a == b;
    }

    // JSON escapes may encode lone surrogates; System.Text.Json throws InvalidOperationException when unescaping them.
    static string NameOf(string path, JsonProperty prop, string? tensor)
    {
        try { return prop.Name; }
        catch (InvalidOperationException e) { throw new SafeTensorsFormatException(path, "header key is not valid Unicode (bad \\u escape)", tensor, e); }
    }

    static string StringOf(string path, JsonElement value, string? tensor)
    {
        try { return value.GetString()!; }
        catch (InvalidOperationException e) { throw new SafeTensorsFormatException(path, "header string is not valid Unicode (bad \\u escape)", tensor, e); }
    }

    // ---- lookups -------------------------------------------------------------------------

    public bool TryGet(string name, out SafeTensorInfo info)
    {
        ThrowIfDisposed();
        return _byName.TryGetValue(name, out info!);
    }

    public SafeTensorInfo Get(string name)
    {
        if (TryGet(name, out var info)) return info;
        throw new KeyNotFoundException($"{Path}: no tensor named '{name}' ({_tensors.Length} tensors in file)");
    }

    public bool Contains(string name) => TryGet(name, out _);

    /// <summary>The tensor's raw little-endian bytes, zero-copy.</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var info = Get(name);
        if (info.ByteLength > int.MaxValue)
            throw new InvalidOperationException($"{Path}: tensor '{name}' is {info.ByteLength} bytes, more than a span can hold; use GetPointer");
        return new ReadOnlySpan<byte>(_data + info.DataBegin, (int)info.ByteLength);
    }

    /// <summary>Pointer to the first byte of the tensor, for tensors over 2 GiB. Valid until Dispose.</summary>
    public byte* GetPointer(string name) => _data + Get(name).DataBegin;

    /// <summary>
    /// The tensor as elements of T, zero-copy. T must have the dtype's element size (e.g. ushort for BF16).
    /// The data may be unaligned for files not written by us; .NET span reads tolerate that.
    /// </summary>
    public ReadOnlySpan<T> GetSpan<T>(string name) where T : unmanaged
    {
        var info = Get(name);
        int size = info.DType.ElementSize();
        if (sizeof(T) != size)
            throw new ArgumentException($"{Path}: tensor '{name}' is {info.DType.ToHeaderString()} ({size} bytes per element) but {typeof(T).Name} is {sizeof(T)} bytes");
        long count = info.ElementCount;
        if (count > int.MaxValue)
            throw new InvalidOperationException($"{Path}: tensor '{name}' has {count} elements, more than a span can hold; use GetPointer");
        return new ReadOnlySpan<T>(_data + info.DataBegin, (int)count);
    }

    /// <summary>Copies the tensor into a new float[], converting F64/F32/F16/BF16.</summary>
    public float[] ReadAsFloat32(string name)
    {
        var info = Get(name);
        long count = info.ElementCount;
        if (count > Array.MaxLength)
            throw new InvalidOperationException($"{Path}: tensor '{name}' has {count} elements, more than a float[] can hold");
        var result = new float[count];
        try { FloatConversion.ToFloat32(info.DType, _data + info.DataBegin, result); }
        catch (NotSupportedException e) { throw new NotSupportedException($"{Path}: tensor '{name}': {e.Message}", e); }
        return result;
    }

    void ThrowIfDisposed() => _mapping.ThrowIfDisposed(this);

    public void Dispose() => _mapping.Dispose();
}

/// <summary>Float decoding shared by the single-file and sharded readers.</summary>
static unsafe class FloatConversion
{
    /// <summary>Decodes destination.Length elements of dtype from src (little-endian), in chunks so each span stays under 2 GiB.</summary>
    public static void ToFloat32(SafeTensorsDType dtype, byte* src, Span<float> destination)
    {
        const int Chunk = 1 << 24;
        int size = dtype switch
        {
            SafeTensorsDType.F64 or SafeTensorsDType.F32 or SafeTensorsDType.F16 or SafeTensorsDType.BF16 => dtype.ElementSize(),
            _ => throw new NotSupportedException($"cannot convert {dtype.ToHeaderString()} to float32 (only F64, F32, F16, BF16)"),
        };
        for (int start = 0; start < destination.Length; start += Chunk)
        {
            int m = Math.Min(Chunk, destination.Length - start);
            var s = new ReadOnlySpan<byte>(src + (long)start * size, m * size);
            var d = destination.Slice(start, m);
            switch (dtype)
            {
                case SafeTensorsDType.F32:
                    if (BitConverter.IsLittleEndian) MemoryMarshal.Cast<byte, float>(s).CopyTo(d);
                    else for (int i = 0; i < m; i++) d[i] = BinaryPrimitives.ReadSingleLittleEndian(s[(4 * i)..]);
                    break;
                case SafeTensorsDType.F64:
                    for (int i = 0; i < m; i++) d[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(s[(8 * i)..]);
                    break;
                case SafeTensorsDType.F16:
                    for (int i = 0; i < m; i++) d[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(s[(2 * i)..]);
                    break;
                case SafeTensorsDType.BF16:
                    // bfloat16 is the top half of an IEEE float32: widening is exact.
                    for (int i = 0; i < m; i++) d[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(s[(2 * i)..]) << 16);
                    break;
            }
        }
    }
}
