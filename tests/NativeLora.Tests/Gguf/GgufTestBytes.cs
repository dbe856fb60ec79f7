using System.Text;

namespace NativeLora.Tests.Gguf;

/// <summary>
/// Builds GGUF bytes by hand from docs/gguf.md (little-endian u32/u64, u64-length strings), without
/// GgufWriter, so reader tests do not depend on the writer and can spell out malformed files.
/// </summary>
internal sealed class GgufTestBytes
{
    readonly List<byte> _b = new();

    public int Length => _b.Count;
    public byte[] ToArray() => _b.ToArray();

    public GgufTestBytes Raw(params byte[] bytes) { _b.AddRange(bytes); return this; }

    public GgufTestBytes U8(byte v) { _b.Add(v); return this; }

    public GgufTestBytes U32(uint v)
    {
        for (int i = 0; i < 4; i++) _b.Add((byte)(v >> (8 * i)));
        return this;
    }

    public GgufTestBytes U64(ulong v)
    {
        for (int i = 0; i < 8; i++) _b.Add((byte)(v >> (8 * i)));
        return this;
    }

    public GgufTestBytes Str(string s) => StrBytes(Encoding.UTF8.GetBytes(s));

    public GgufTestBytes StrBytes(byte[] bytes) { U64((ulong)bytes.Length); _b.AddRange(bytes); return this; }

    /// <summary>"GGUF", version, tensor count, KV count.</summary>
    public GgufTestBytes Header(ulong tensors, ulong kvs, uint version = 3) { Raw("GGUF"u8.ToArray()); U32(version); U64(tensors); return U64(kvs); }

    public GgufTestBytes KvU32(string key, uint v) { Str(key); U32(4); return U32(v); }

    public GgufTestBytes KvString(string key, string v) { Str(key); U32(8); return Str(v); }

    /// <summary>A tensor info; dims are given innermost first, as stored.</summary>
    public GgufTestBytes Tensor(string name, uint type, ulong offset, params ulong[] dims)
    {
        Str(name);
        U32((uint)dims.Length);
        foreach (var d in dims) U64(d);
        U32(type);
        return U64(offset);
    }

    /// <summary>Zero bytes up to the next multiple of alignment.</summary>
    public GgufTestBytes Pad(int alignment = 32)
    {
        while (_b.Count % alignment != 0) _b.Add(0);
        return this;
    }

    public GgufTestBytes Zeros(int n) { _b.AddRange(new byte[n]); return this; }
}
