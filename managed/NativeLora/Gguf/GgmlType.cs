namespace NativeLora.Gguf;

/// <summary>
/// ggml tensor types by their on-disk id (ggml.h <c>enum ggml_type</c>, docs/gguf.md). Ids 4, 5,
/// 31–33 and 36–38 were removed from ggml and are invalid in a file.
/// </summary>
public enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
}

public static class GgmlTypes
{
    /// <summary>
    /// Elements per block and bytes per block, as ggml_blck_size/ggml_type_size report them
    /// (checked against libggml-base). A row of n elements takes n / block × bytes.
    /// </summary>
    public static bool TryGetLayout(GgmlType type, out int blockSize, out int typeSize)
    {
        (blockSize, typeSize) = type switch
        {
            GgmlType.F32 => (1, 4), GgmlType.F16 => (1, 2), GgmlType.BF16 => (1, 2), GgmlType.F64 => (1, 8),
            GgmlType.I8 => (1, 1), GgmlType.I16 => (1, 2), GgmlType.I32 => (1, 4), GgmlType.I64 => (1, 8),
            GgmlType.Q4_0 => (32, 18), GgmlType.Q4_1 => (32, 20), GgmlType.Q5_0 => (32, 22), GgmlType.Q5_1 => (32, 24),
            GgmlType.Q8_0 => (32, 34), GgmlType.Q8_1 => (32, 36), GgmlType.IQ4_NL => (32, 18), GgmlType.MXFP4 => (32, 17),
            GgmlType.Q2_K => (256, 84), GgmlType.Q3_K => (256, 110), GgmlType.Q4_K => (256, 144), GgmlType.Q5_K => (256, 176),
            GgmlType.Q6_K => (256, 210), GgmlType.Q8_K => (256, 292), GgmlType.IQ2_XXS => (256, 66), GgmlType.IQ2_XS => (256, 74),
            GgmlType.IQ3_XXS => (256, 98), GgmlType.IQ1_S => (256, 50), GgmlType.IQ3_S => (256, 110), GgmlType.IQ2_S => (256, 82),
            GgmlType.IQ4_XS => (256, 136), GgmlType.IQ1_M => (256, 56), GgmlType.TQ1_0 => (256, 54), GgmlType.TQ2_0 => (256, 66),
            _ => (0, 0),
        };
        return blockSize != 0;
    }

    public static bool IsKnown(GgmlType type) => TryGetLayout(type, out _, out _);

    public static int BlockSize(GgmlType type) =>
        TryGetLayout(type, out int b, out _) ? b : throw new ArgumentException($"unknown ggml type {(uint)type}", nameof(type));

    public static int TypeSize(GgmlType type) =>
        TryGetLayout(type, out _, out int s) ? s : throw new ArgumentException($"unknown ggml type {(uint)type}", nameof(type));

    /// <summary>Bytes of a row of n elements; n must be a multiple of the block size.</summary>
    public static long RowBytes(GgmlType type, long n)
    {
        int b = BlockSize(type);
        if (n < 0 || n % b != 0) throw new ArgumentException($"{type}: a row of {n} elements is not a whole number of {b}-element blocks", nameof(n));
        return checked(n / b * TypeSize(type));
    }

    /// <summary>Whether the type stores blocks with scales (ggml_is_quantized) rather than plain numbers.</summary>
    public static bool IsQuantized(GgmlType type) =>
        IsKnown(type) && type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.F64
                                      or GgmlType.I8 or GgmlType.I16 or GgmlType.I32 or GgmlType.I64);
}
