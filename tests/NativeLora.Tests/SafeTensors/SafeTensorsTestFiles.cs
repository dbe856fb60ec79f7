using System.Text;

namespace NativeLora.Tests.SafeTensors;

/// <summary>
/// Builds safetensors bytes by hand from the format rules (u64 LE N, N bytes of JSON, data),
/// independently of SafeTensorsWriter, and gives each test its own temp directory.
/// </summary>
internal static class SafeTensorsTestFiles
{
    /// <summary>Little-endian u64 spelled out byte by byte.</summary>
    public static byte[] U64(ulong value)
    {
        var b = new byte[8];
        for (int i = 0; i < 8; i++) b[i] = (byte)(value >> (8 * i));
        return b;
    }

    /// <summary>Header JSON (space-padded to 8-byte alignment unless pad is false) with its length prefix, then data.</summary>
    public static byte[] Build(string headerJson, byte[] data, bool pad = true)
    {
        var header = new List<byte>(Encoding.UTF8.GetBytes(headerJson));
        if (pad) while ((8 + header.Count) % 8 != 0) header.Add((byte)' ');
        return [.. U64((ulong)header.Count), .. header, .. data];
    }

    /// <summary>Arbitrary prefix and raw header bytes, for length-prefix and UTF-8 attacks.</summary>
    public static byte[] Raw(ulong prefix, byte[] header, byte[] data) => [.. U64(prefix), .. header, .. data];

    public static byte[] Seq(int count, int start = 0)
    {
        var b = new byte[count];
        for (int i = 0; i < count; i++) b[i] = (byte)(start + i);
        return b;
    }

    public static byte[] Floats(params float[] values)
    {
        var b = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            uint bits = (uint)BitConverter.SingleToInt32Bits(values[i]);
            for (int k = 0; k < 4; k++) b[4 * i + k] = (byte)(bits >> (8 * k));
        }
        return b;
    }
}
