using System.Buffers.Binary;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using NativeLora.IO;

namespace NativeLora.SafeTensors;

/// <summary>
/// Builds a safetensors file: 8-byte little-endian N, N bytes of compact JSON (<c>__metadata__</c>
/// first, then tensors in the order added, offsets contiguous in that order), space-padded so the
/// data buffer starts at a multiple of 8, then the data. Unlike the Rust crate we keep insertion
/// order instead of sorting by dtype alignment; readers do not care.
/// </summary>
public sealed class SafeTensorsWriter
{
    // Data is produced when the file is written, tensor by tensor: a producer lets a caller (merge,
    // export) hold one tensor in memory at a time instead of the whole model.
    readonly List<(string Name, SafeTensorsDType DType, long[] Shape, long Length, Func<ReadOnlyMemory<byte>> Data)> _tensors = new();
    readonly HashSet<string> _names = new(StringComparer.Ordinal);
    readonly List<KeyValuePair<string, string>> _metadata = new();

    public SafeTensorsWriter Add(string name, SafeTensorsDType dtype, long[] shape, ReadOnlyMemory<byte> data)
    {
        RequireLength(name ?? throw new ArgumentNullException(nameof(name)), dtype, shape ?? throw new ArgumentNullException(nameof(shape)), data);
        return Add(name, dtype, shape, () => data);
    }

    /// <summary>Checks that data holds exactly the bytes of the shape (the writers' Add with bytes in hand).</summary>
    internal static void RequireLength(string name, SafeTensorsDType dtype, long[] shape, ReadOnlyMemory<byte> data)
    {
        long expected = ByteLength(name, dtype, shape);
        if (expected != data.Length)
            throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtype.ToHeaderString()} needs {expected} bytes, got {data.Length}", nameof(data));
    }

    /// <summary>Adds a tensor whose bytes are produced only when the file is written (called once).</summary>
    public SafeTensorsWriter Add(string name, SafeTensorsDType dtype, long[] shape, Func<ReadOnlyMemory<byte>> produce)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved for the metadata entry", nameof(name));
        RequireValidUnicode(name, nameof(name));
        if (_names.Contains(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        long expected = ByteLength(name, dtype, shape);
        _names.Add(name);
        _tensors.Add((name, dtype, (long[])shape.Clone(), expected, produce));
        return this;
    }

    /// <summary>Sets (or replaces) a <c>__metadata__</c> entry; entries keep their first-set order.</summary>
    public SafeTensorsWriter SetMetadata(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        RequireValidUnicode(key, nameof(key));
        RequireValidUnicode(value, nameof(value));
        int i = _metadata.FindIndex(kv => kv.Key == key);
        if (i >= 0) _metadata[i] = new(key, value);
        else _metadata.Add(new(key, value));
        return this;
    }

    internal static long ByteLength(string name, SafeTensorsDType dtype, long[] shape)
    {
        long n = dtype.ElementSize();
        foreach (var d in shape)
        {
            if (d < 0) throw new ArgumentException($"tensor '{name}': negative dimension in shape [{string.Join(", ", shape)}]", nameof(shape));
            try { n = checked(n * d); }
            catch (OverflowException) { throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape)}] overflows", nameof(shape)); }
        }
        return n;
    }

    // Lone surrogates cannot be written as UTF-8; reject them here with a clear message.
    static void RequireValidUnicode(string s, string param)
    {
        try { new UTF8Encoding(false, true).GetByteCount(s); }
        catch (EncoderFallbackException) { throw new ArgumentException($"'{s}' is not valid Unicode (lone surrogate)", param); }
    }

    /// <summary>The padded header bytes (without the 8-byte length prefix).</summary>
    public byte[] BuildHeader()
    {
        var buffer = new MemoryStream();
        // Relaxed escaping keeps names like "a+b" readable; output is still valid JSON.
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = false, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (_metadata.Count > 0)
            {
                json.WriteStartObject("__metadata__");
                foreach (var kv in _metadata) json.WriteString(kv.Key, kv.Value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in _tensors)
            {
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", t.DType.ToHeaderString());
                json.WriteStartArray("shape");
                foreach (var d in t.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + t.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += t.Length;
            }
            json.WriteEndObject();
        }
        // Pad with spaces so 8 + N is a multiple of 8: the data buffer (and each 8-byte dtype at an 8-multiple offset) is aligned.
        int padding = (int)((8 - buffer.Length % 8) % 8);
        for (int i = 0; i < padding; i++) buffer.WriteByte((byte)' ');
        if (buffer.Length > SafeTensorsFile.MaxHeaderBytes)
            throw new InvalidOperationException($"header would be {buffer.Length} bytes, over the {SafeTensorsFile.MaxHeaderBytes}-byte limit readers enforce");
        return buffer.ToArray();
    }

    /// <summary>Writes the whole file to a stream.</summary>
    public void WriteTo(Stream stream)
    {
        byte[] header = BuildHeader();
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        stream.Write(prefix);
        stream.Write(header);
        foreach (var t in _tensors)
        {
            var data = t.Data();
            if (data.Length != t.Length)
                throw new InvalidOperationException($"tensor '{t.Name}': its producer gave {data.Length} bytes, the header says {t.Length}");
            stream.Write(data.Span);
        }
    }

    /// <summary>Writes atomically (temp file + fsync + rename).</summary>
    public void Write(string path) => AtomicFile.Write(path, WriteTo);
}
