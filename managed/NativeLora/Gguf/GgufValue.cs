namespace NativeLora.Gguf;

/// <summary>Metadata value types by their on-disk id (docs/gguf.md <c>gguf_metadata_value_type</c>).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One metadata value: a scalar, a string, or an array of scalars or strings. Arrays of arrays are
/// legal in the spec but ggml's reader rejects them, so they are not represented here.
/// Arrays are stored as typed .NET arrays (byte[], int[], float[], bool[], string[] …).
/// </summary>
public sealed class GgufValue
{
    readonly object _value;

    public GgufValueType Type { get; }
    /// <summary>The element type when Type is Array.</summary>
    public GgufValueType ElementType { get; }

    GgufValue(GgufValueType type, GgufValueType elementType, object value)
    {
        Type = type; ElementType = elementType; _value = value;
    }

    public static GgufValue U8(byte v) => new(GgufValueType.UInt8, default, v);
    public static GgufValue I8(sbyte v) => new(GgufValueType.Int8, default, v);
    public static GgufValue U16(ushort v) => new(GgufValueType.UInt16, default, v);
    public static GgufValue I16(short v) => new(GgufValueType.Int16, default, v);
    public static GgufValue U32(uint v) => new(GgufValueType.UInt32, default, v);
    public static GgufValue I32(int v) => new(GgufValueType.Int32, default, v);
    public static GgufValue F32(float v) => new(GgufValueType.Float32, default, v);
    public static GgufValue Bool(bool v) => new(GgufValueType.Bool, default, v);
    public static GgufValue String(string v) => new(GgufValueType.String, default, v ?? throw new ArgumentNullException(nameof(v)));
    public static GgufValue U64(ulong v) => new(GgufValueType.UInt64, default, v);
    public static GgufValue I64(long v) => new(GgufValueType.Int64, default, v);
    public static GgufValue F64(double v) => new(GgufValueType.Float64, default, v);

    public static GgufValue Array(byte[] v) => Arr(GgufValueType.UInt8, v);
    public static GgufValue Array(sbyte[] v) => Arr(GgufValueType.Int8, v);
    public static GgufValue Array(ushort[] v) => Arr(GgufValueType.UInt16, v);
    public static GgufValue Array(short[] v) => Arr(GgufValueType.Int16, v);
    public static GgufValue Array(uint[] v) => Arr(GgufValueType.UInt32, v);
    public static GgufValue Array(int[] v) => Arr(GgufValueType.Int32, v);
    public static GgufValue Array(float[] v) => Arr(GgufValueType.Float32, v);
    public static GgufValue Array(bool[] v) => Arr(GgufValueType.Bool, v);
    public static GgufValue Array(string[] v)
    {
        ArgumentNullException.ThrowIfNull(v);
        foreach (var s in v) ArgumentNullException.ThrowIfNull(s, "array element");
        return Arr(GgufValueType.String, v);
    }
    public static GgufValue Array(ulong[] v) => Arr(GgufValueType.UInt64, v);
    public static GgufValue Array(long[] v) => Arr(GgufValueType.Int64, v);
    public static GgufValue Array(double[] v) => Arr(GgufValueType.Float64, v);

    static GgufValue Arr(GgufValueType element, System.Array v) =>
        new(GgufValueType.Array, element, v ?? throw new ArgumentNullException(nameof(v)));

    public bool IsArray => Type == GgufValueType.Array;
    /// <summary>Array length; 1 for a scalar.</summary>
    public long Count => _value is System.Array a ? a.LongLength : 1;

    T As<T>(GgufValueType expected)
    {
        if (Type != expected || _value is not T v)
            throw new InvalidCastException($"GGUF value is {Describe()}, not {expected}");
        return v;
    }

    T[] AsArray<T>(GgufValueType expected)
    {
        if (Type != GgufValueType.Array || ElementType != expected || _value is not T[] v)
            throw new InvalidCastException($"GGUF value is {Describe()}, not an array of {expected}");
        return v;
    }

    public byte AsUInt8() => As<byte>(GgufValueType.UInt8);
    public sbyte AsInt8() => As<sbyte>(GgufValueType.Int8);
    public ushort AsUInt16() => As<ushort>(GgufValueType.UInt16);
    public short AsInt16() => As<short>(GgufValueType.Int16);
    public uint AsUInt32() => As<uint>(GgufValueType.UInt32);
    public int AsInt32() => As<int>(GgufValueType.Int32);
    public float AsFloat32() => As<float>(GgufValueType.Float32);
    public bool AsBool() => As<bool>(GgufValueType.Bool);
    public string AsString() => As<string>(GgufValueType.String);
    public ulong AsUInt64() => As<ulong>(GgufValueType.UInt64);
    public long AsInt64() => As<long>(GgufValueType.Int64);
    public double AsFloat64() => As<double>(GgufValueType.Float64);

    public byte[] AsUInt8Array() => AsArray<byte>(GgufValueType.UInt8);
    public sbyte[] AsInt8Array() => AsArray<sbyte>(GgufValueType.Int8);
    public ushort[] AsUInt16Array() => AsArray<ushort>(GgufValueType.UInt16);
    public short[] AsInt16Array() => AsArray<short>(GgufValueType.Int16);
    public uint[] AsUInt32Array() => AsArray<uint>(GgufValueType.UInt32);
    public int[] AsInt32Array() => AsArray<int>(GgufValueType.Int32);
    public float[] AsFloat32Array() => AsArray<float>(GgufValueType.Float32);
    public bool[] AsBoolArray() => AsArray<bool>(GgufValueType.Bool);
    public string[] AsStringArray() => AsArray<string>(GgufValueType.String);
    public ulong[] AsUInt64Array() => AsArray<ulong>(GgufValueType.UInt64);
    public long[] AsInt64Array() => AsArray<long>(GgufValueType.Int64);
    public double[] AsFloat64Array() => AsArray<double>(GgufValueType.Float64);

    /// <summary>The boxed scalar or typed array, for generic printing and comparison.</summary>
    public object RawValue => _value;

    public string Describe() => IsArray ? $"an array of {Count} {ElementType}" : Type.ToString();

    public override string ToString() => _value switch
    {
        string s => s,
        System.Array a => $"[{a.Length} × {ElementType}]",
        _ => Convert.ToString(_value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };

    /// <summary>Bytes of one fixed-size scalar of this type; 0 for String and Array.</summary>
    public static int ScalarSize(GgufValueType t) => t switch
    {
        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
        _ => 0,
    };
}
