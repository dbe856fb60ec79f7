namespace NativeLora.SafeTensors;

/// <summary>
/// Element types of the safetensors format. Names are spelled exactly as the header writes them.
/// The brief's twelve plus U16/U32/U64 (in the reference crate since its first releases), and
/// F8_E8M0/C64 (newer whole-byte types). The reference's sub-byte types (F4, F6_*) are not
/// supported: they have no whole-byte element size and are rejected as unknown.
/// </summary>
public enum SafeTensorsDType
{
    F64, F32, F16, BF16,
    I64, I32, I16, I8,
    U64, U32, U16, U8,
    BOOL,
    F8_E4M3, F8_E5M2, F8_E8M0,
    C64,
}

public static class SafeTensorsDTypes
{
    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.F64 or SafeTensorsDType.I64 or SafeTensorsDType.U64 or SafeTensorsDType.C64 => 8,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 or SafeTensorsDType.U32 => 4,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.I16 or SafeTensorsDType.U16 => 2,
        SafeTensorsDType.I8 or SafeTensorsDType.U8 or SafeTensorsDType.BOOL
            or SafeTensorsDType.F8_E4M3 or SafeTensorsDType.F8_E5M2 or SafeTensorsDType.F8_E8M0 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>Exact, case-sensitive parse of a header dtype string (Enum.TryParse would accept "f32" and "1").</summary>
    public static bool TryParse(string? text, out SafeTensorsDType dtype)
    {
        switch (text)
        {
            case "F64": dtype = SafeTensorsDType.F64; return true;
            case "F32": dtype = SafeTensorsDType.F32; return true;
            case "F16": dtype = SafeTensorsDType.F16; return true;
            case "BF16": dtype = SafeTensorsDType.BF16; return true;
            case "I64": dtype = SafeTensorsDType.I64; return true;
            case "I32": dtype = SafeTensorsDType.I32; return true;
            case "I16": dtype = SafeTensorsDType.I16; return true;
            case "I8": dtype = SafeTensorsDType.I8; return true;
            case "U64": dtype = SafeTensorsDType.U64; return true;
            case "U32": dtype = SafeTensorsDType.U32; return true;
            case "U16": dtype = SafeTensorsDType.U16; return true;
            case "U8": dtype = SafeTensorsDType.U8; return true;
            case "BOOL": dtype = SafeTensorsDType.BOOL; return true;
            case "F8_E4M3": dtype = SafeTensorsDType.F8_E4M3; return true;
            case "F8_E5M2": dtype = SafeTensorsDType.F8_E5M2; return true;
            case "F8_E8M0": dtype = SafeTensorsDType.F8_E8M0; return true;
            case "C64": dtype = SafeTensorsDType.C64; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>The header spelling. Written out rather than Enum.ToString so renaming a member cannot change the format.</summary>
    public static string ToHeaderString(this SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.F64 => "F64",
        SafeTensorsDType.F32 => "F32",
        SafeTensorsDType.F16 => "F16",
        SafeTensorsDType.BF16 => "BF16",
        SafeTensorsDType.I64 => "I64",
        SafeTensorsDType.I32 => "I32",
        SafeTensorsDType.I16 => "I16",
        SafeTensorsDType.I8 => "I8",
        SafeTensorsDType.U64 => "U64",
        SafeTensorsDType.U32 => "U32",
        SafeTensorsDType.U16 => "U16",
        SafeTensorsDType.U8 => "U8",
        SafeTensorsDType.BOOL => "BOOL",
        SafeTensorsDType.F8_E4M3 => "F8_E4M3",
        SafeTensorsDType.F8_E5M2 => "F8_E5M2",
        SafeTensorsDType.F8_E8M0 => "F8_E8M0",
        SafeTensorsDType.C64 => "C64",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };
}
