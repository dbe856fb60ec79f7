using System.Text;
using NativeLora.IO;

namespace NativeLora.Gguf;

/// <summary>
/// Builds a GGUF v3 file (ggml docs/gguf.md): "GGUF", version 3, tensor count, KV count, the
/// metadata in insertion order, the tensor infos (dims innermost first, i.e. the PyTorch shape
/// reversed), zero padding to the alignment, then each tensor's data zero-padded to the alignment
/// (the last one too, as ggml's own writer does). Tensor data is produced when the file is written,
/// one tensor at a time, so a caller never needs the whole model in memory.
/// </summary>
public sealed class GgufWriter
{
    public const uint DefaultAlignment = 32;
    /// <summary>ggml's GGML_MAX_NAME is 64 including the terminating NUL; its reader rejects longer names.</summary>
    public const int MaxTensorNameBytes = 63;
    /// <summary>The spec's limit on key length.</summary>
    public const int MaxKeyBytes = 65535;
    public const string AlignmentKey = "general.alignment";

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    sealed record PendingTensor(string Name, GgmlType Type, long[] Shape, long ByteLength, Action<Stream> Write);

    readonly List<KeyValuePair<string, GgufValue>> _metadata = new();
    readonly List<PendingTensor> _tensors = new();
    readonly HashSet<string> _names = new(StringComparer.Ordinal);

    public uint Alignment { get; }
    public IReadOnlyList<KeyValuePair<string, GgufValue>> Metadata => _metadata;

    /// <param name="alignment">Data alignment; a value other than 32 is recorded as general.alignment (u32).</param>
    public GgufWriter(uint alignment = DefaultAlignment)
    {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentException($"alignment must be a power of two, got {alignment}", nameof(alignment));
        Alignment = alignment;
        if (alignment != DefaultAlignment) _metadata.Add(new(AlignmentKey, GgufValue.U32(alignment)));
    }

    /// <summary>Sets (or replaces, keeping its position) a metadata entry.</summary>
    public GgufWriter Set(string key, GgufValue value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        if (key.Length == 0) throw new ArgumentException("metadata key is empty", nameof(key));
        if (Utf8Length(key, nameof(key)) > MaxKeyBytes) throw new ArgumentException($"metadata key '{key[..Math.Min(40, key.Length)]}…' is over {MaxKeyBytes} bytes", nameof(key));
        if (key == AlignmentKey) throw new ArgumentException($"'{AlignmentKey}' is set through the GgufWriter constructor", nameof(key));
        if (value.Type == GgufValueType.String) Utf8Length(value.AsString(), nameof(value));
        if (value.IsArray && value.ElementType == GgufValueType.String)
            foreach (var s in value.AsStringArray()) Utf8Length(s, nameof(value));
        int i = _metadata.FindIndex(kv => kv.Key == key);
        if (i >= 0) _metadata[i] = new(key, value);
        else _metadata.Add(new(key, value));
        return this;
    }

    public GgufWriter Set(string key, string value) => Set(key, GgufValue.String(value));
    public GgufWriter Set(string key, uint value) => Set(key, GgufValue.U32(value));
    public GgufWriter Set(string key, float value) => Set(key, GgufValue.F32(value));
    public GgufWriter Set(string key, bool value) => Set(key, GgufValue.Bool(value));

    /// <summary>Adds a tensor from its encoded bytes (ggml layout, rows of the innermost dimension).</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, ReadOnlyMemory<byte> data)
    {
        long expected = ByteLength(name, type, shape);
        if (data.Length != expected)
            throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape)}] of {type} needs {expected} bytes, got {data.Length}", nameof(data));
        return Add(name, type, shape, expected, s => s.Write(data.Span));
    }

    /// <summary>
    /// Adds a tensor whose encoded bytes are written by <paramref name="writeData"/> when the file is
    /// written (called once); it must write exactly the tensor's byte length.
    /// </summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, Action<Stream> writeData)
    {
        ArgumentNullException.ThrowIfNull(writeData);
        return Add(name, type, shape, ByteLength(name, type, shape), writeData);
    }

    /// <summary>
    /// Adds a tensor given as f32 values in row-major PyTorch order, encoded to <paramref name="type"/>
    /// with <see cref="GgmlQuants"/> while the file is written. The producer is called once.
    /// </summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, Func<ReadOnlyMemory<float>> produce)
    {
        ArgumentNullException.ThrowIfNull(produce);
        if (!GgmlQuants.CanEncode(type)) throw new ArgumentException($"tensor '{name}': no encoder for {type}", nameof(type));
        long bytes = ByteLength(name, type, shape);
        long rowLength = shape[^1], elements = 1;
        foreach (var d in shape) elements *= d;
        return Add(name, type, shape, bytes, stream =>
        {
            var values = produce();
            if (values.Length != elements)
                throw new InvalidOperationException($"tensor '{name}': its producer gave {values.Length} values, the shape [{string.Join(", ", shape)}] has {elements}");
            if (elements == 0) return;
            // Encode a few rows at a time so the encoded copy stays small.
            long rowBytes = GgmlTypes.RowBytes(type, rowLength);
            int rowsPerChunk = (int)Math.Max(1, Math.Min(elements / rowLength, (1 << 20) / Math.Max(1, rowBytes)));
            var buffer = new byte[rowsPerChunk * rowBytes];
            for (long row = 0; row < elements / rowLength; row += rowsPerChunk)
            {
                int n = (int)Math.Min(rowsPerChunk, elements / rowLength - row);
                var src = values.Span.Slice((int)(row * rowLength), (int)(n * rowLength));
                var dst = buffer.AsSpan(0, (int)(n * rowBytes));
                GgmlQuants.Encode(type, src, dst);
                stream.Write(dst);
            }
        });
    }

    GgufWriter Add(string name, GgmlType type, long[] shape, long bytes, Action<Stream> write)
    {
        if (!_names.Add(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        _tensors.Add(new PendingTensor(name, type, (long[])shape.Clone(), bytes, write));
        return this;
    }

    /// <summary>Bytes of a tensor of this type and PyTorch shape; validates name, shape and type.</summary>
    public static long ByteLength(string name, GgmlType type, long[] shape)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (name.Length == 0) throw new ArgumentException("tensor name is empty", nameof(name));
        if (Utf8Length(name, nameof(name)) > MaxTensorNameBytes)
            throw new ArgumentException($"tensor name '{name}' is over {MaxTensorNameBytes} bytes (ggml's limit)", nameof(name));
        if (shape.Length is < 1 or > 4)
            throw new ArgumentException($"tensor '{name}': ggml tensors have 1 to 4 dimensions, got [{string.Join(", ", shape)}]", nameof(shape));
        if (!GgmlTypes.TryGetLayout(type, out int block, out int typeSize))
            throw new ArgumentException($"tensor '{name}': unknown ggml type {(uint)type}", nameof(type));
        if (shape[^1] % block != 0)
            throw new ArgumentException($"tensor '{name}': {type} needs rows (the last dimension) to be a multiple of {block}, shape is [{string.Join(", ", shape)}]", nameof(shape));
        long elements = 1;
        foreach (var d in shape)
        {
            if (d < 0) throw new ArgumentException($"tensor '{name}': negative dimension in [{string.Join(", ", shape)}]", nameof(shape));
            try { elements = checked(elements * d); }
            catch (OverflowException) { throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape)}] overflows", nameof(shape)); }
        }
        try { return checked(elements / block * typeSize); }
        catch (OverflowException) { throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape)}] of {type} overflows", nameof(shape)); }
    }

    static int Utf8Length(string s, string param)
    {
        try { return StrictUtf8.GetByteCount(s); }
        catch (EncoderFallbackException) { throw new ArgumentException($"'{s}' is not valid Unicode (lone surrogate)", param); }
    }

    long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    /// <summary>Header, metadata and tensor infos, zero-padded to the alignment (where the data section starts).</summary>
    public byte[] BuildHeader()
    {
        var buffer = new MemoryStream();
        using (var w = new BinaryWriter(buffer, StrictUtf8, leaveOpen: true)) // BinaryWriter is little-endian on every platform
        {
            w.Write("GGUF"u8);
            w.Write(3u);
            w.Write((ulong)_tensors.Count);
            w.Write((ulong)_metadata.Count);
            foreach (var kv in _metadata)
            {
                WriteString(w, kv.Key);
                w.Write((uint)kv.Value.Type);
                if (kv.Value.IsArray)
                {
                    w.Write((uint)kv.Value.ElementType);
                    w.Write((ulong)kv.Value.Count);
                    WriteArray(w, kv.Value);
                }
                else WriteScalar(w, kv.Value);
            }
            long offset = 0;
            foreach (var t in _tensors)
            {
                WriteString(w, t.Name);
                w.Write((uint)t.Shape.Length);
                for (int i = t.Shape.Length - 1; i >= 0; i--) w.Write((ulong)t.Shape[i]); // ne[0] is the innermost (last PyTorch) dimension
                w.Write((uint)t.Type);
                w.Write((ulong)offset);
                offset += Align(t.ByteLength);
            }
        }
        buffer.SetLength(Align(buffer.Length)); // MemoryStream zero-fills the extension
        return buffer.ToArray();
    }

    static void WriteString(BinaryWriter w, string s)
    {
        byte[] bytes = StrictUtf8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteScalar(BinaryWriter w, GgufValue v)
    {
        switch (v.Type)
        {
            case GgufValueType.UInt8: w.Write(v.AsUInt8()); break;
            case GgufValueType.Int8: w.Write(v.AsInt8()); break;
            case GgufValueType.UInt16: w.Write(v.AsUInt16()); break;
            case GgufValueType.Int16: w.Write(v.AsInt16()); break;
            case GgufValueType.UInt32: w.Write(v.AsUInt32()); break;
            case GgufValueType.Int32: w.Write(v.AsInt32()); break;
            case GgufValueType.Float32: w.Write(v.AsFloat32()); break;
            case GgufValueType.Bool: w.Write((byte)(v.AsBool() ? 1 : 0)); break;
            case GgufValueType.String: WriteString(w, v.AsString()); break;
            case GgufValueType.UInt64: w.Write(v.AsUInt64()); break;
            case GgufValueType.Int64: w.Write(v.AsInt64()); break;
            case GgufValueType.Float64: w.Write(v.AsFloat64()); break;
            default: throw new InvalidOperationException($"cannot write a scalar of type {v.Type}");
        }
    }

    static void WriteArray(BinaryWriter w, GgufValue v)
    {
        switch (v.ElementType)
        {
            case GgufValueType.UInt8: w.Write(v.AsUInt8Array()); break;
            case GgufValueType.Int8: foreach (var x in v.AsInt8Array()) w.Write(x); break;
            case GgufValueType.UInt16: foreach (var x in v.AsUInt16Array()) w.Write(x); break;
            case GgufValueType.Int16: foreach (var x in v.AsInt16Array()) w.Write(x); break;
            case GgufValueType.UInt32: foreach (var x in v.AsUInt32Array()) w.Write(x); break;
            case GgufValueType.Int32: foreach (var x in v.AsInt32Array()) w.Write(x); break;
            case GgufValueType.Float32: foreach (var x in v.AsFloat32Array()) w.Write(x); break;
            case GgufValueType.Bool: foreach (var x in v.AsBoolArray()) w.Write((byte)(x ? 1 : 0)); break;
            case GgufValueType.String: foreach (var x in v.AsStringArray()) WriteString(w, x); break;
            case GgufValueType.UInt64: foreach (var x in v.AsUInt64Array()) w.Write(x); break;
            case GgufValueType.Int64: foreach (var x in v.AsInt64Array()) w.Write(x); break;
            case GgufValueType.Float64: foreach (var x in v.AsFloat64Array()) w.Write(x); break;
            default: throw new InvalidOperationException($"cannot write an array of {v.ElementType}");
        }
    }

    /// <summary>Writes the whole file to a stream, calling each tensor's producer in order.</summary>
    public void WriteTo(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        stream.Write(BuildHeader());
        Span<byte> zeros = stackalloc byte[256];
        zeros.Clear();
        foreach (var t in _tensors)
        {
            var counted = new CountingStream(stream, t.ByteLength, t.Name);
            t.Write(counted);
            if (counted.Written != t.ByteLength)
                throw new InvalidOperationException($"tensor '{t.Name}': {counted.Written} bytes were written, its shape and type need {t.ByteLength}");
            for (long pad = Align(t.ByteLength) - t.ByteLength; pad > 0; pad -= Math.Min(pad, zeros.Length))
                stream.Write(zeros[..(int)Math.Min(pad, zeros.Length)]);
        }
    }

    /// <summary>Writes atomically (temp file, fsync, rename).</summary>
    public void Write(string path) => AtomicFile.Write(path, WriteTo);

    /// <summary>Forwards writes and refuses to go past the tensor's declared length.</summary>
    sealed class CountingStream(Stream inner, long limit, string name) : Stream
    {
        public long Written { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => Written; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (Written + buffer.Length > limit)
                throw new InvalidOperationException($"tensor '{name}': more than its {limit} bytes were written");
            inner.Write(buffer);
            Written += buffer.Length;
        }
    }
}
