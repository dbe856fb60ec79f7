namespace NativeLora.Tensors;

/// <summary>Element types a tensor can hold. bf16 and f16 are stored as ushort bits; U8 also holds packed 4-bit codes.</summary>
public enum DType
{
    F32,
    BF16,
    F16,
    I32,
    I64,
    U8,
}

public static class DTypeInfo
{
    public static int SizeOf(this DType t) => t switch
    {
        DType.F32 or DType.I32 => 4,
        DType.BF16 or DType.F16 => 2,
        DType.I64 => 8,
        DType.U8 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "unknown dtype"),
    };

    public static bool IsFloat(this DType t) => t is DType.F32 or DType.BF16 or DType.F16;

    /// <summary>v rounded to t (nearest, ties to even) and back: what a tensor of t stores, the reference of the casts.</summary>
    public static float Round(this DType t, float v) => t switch
    {
        DType.BF16 => Kernels.FloatBits.Bf16ToFloat(Kernels.FloatBits.FloatToBf16(v)),
        DType.F16 => Kernels.FloatBits.HalfToFloat(Kernels.FloatBits.FloatToHalf(v)),
        _ => v,
    };

    /// <summary>Floats as bf16 or f16 bits (round to nearest even): the one narrowing behind tensor uploads and checkpoint writes.</summary>
    public static ushort[] ToHalfBits(this DType t, ReadOnlySpan<float> source)
    {
        if (t is not (DType.BF16 or DType.F16)) throw new ArgumentException($"{t.Name()} is not a 16-bit float dtype");
        var bits = new ushort[source.Length];
        for (int i = 0; i < bits.Length; i++)
            bits[i] = t == DType.BF16 ? Kernels.FloatBits.FloatToBf16(source[i]) : Kernels.FloatBits.FloatToHalf(source[i]);
        return bits;
    }

    /// <summary>The native core's GEMM dtype for a float tensor dtype.</summary>
    public static Native.NlDType ToNative(this DType t) => t switch
    {
        DType.F32 => Native.NlDType.F32,
        DType.BF16 => Native.NlDType.BF16,
        DType.F16 => Native.NlDType.F16,
        _ => throw new ArgumentException($"GEMM needs a float dtype (f32, bf16, f16), got {t}"),
    };

    public static string Name(this DType t) => t switch
    {
        DType.F32 => "f32",
        DType.BF16 => "bf16",
        DType.F16 => "f16",
        DType.I32 => "i32",
        DType.I64 => "i64",
        DType.U8 => "u8",
        _ => t.ToString(),
    };

    public static DType Parse(string s) => s.ToLowerInvariant() switch
    {
        "f32" or "float32" or "fp32" => DType.F32,
        "bf16" or "bfloat16" => DType.BF16,
        "f16" or "float16" or "fp16" => DType.F16,
        "i32" or "int32" => DType.I32,
        "i64" or "int64" => DType.I64,
        "u8" or "uint8" => DType.U8,
        _ => throw new ArgumentException($"unknown dtype '{s}' (expected f32, bf16, f16, i32, i64 or u8)"),
    };
}
