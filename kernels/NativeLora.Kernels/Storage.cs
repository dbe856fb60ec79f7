namespace NativeLora.Kernels;

/// <summary>
/// How a kernel reads and writes one element type. Every kernel computes in f32 and is generic
/// over (T, S): T the stored element, S a struct that converts it. ILGPU resolves the struct's
/// interface calls statically, so the conversion is inlined in each kernel instance.
/// </summary>
public interface IStorage<T> where T : unmanaged
{
    float Load(T value);
    T Store(float value);
}

/// <summary>f32 elements, stored as they are.</summary>
public struct F32 : IStorage<float>
{
    public float Load(float value) => value;
    public float Store(float value) => value;
}

/// <summary>bfloat16 elements stored as ushort bits.</summary>
public struct Bf16 : IStorage<ushort>
{
    public float Load(ushort value) => FloatBits.Bf16ToFloat(value);
    public ushort Store(float value) => FloatBits.FloatToBf16(value);
}

/// <summary>IEEE half elements stored as ushort bits.</summary>
public struct F16 : IStorage<ushort>
{
    public float Load(ushort value) => FloatBits.HalfToFloat(value);
    public ushort Store(float value) => FloatBits.FloatToHalf(value);
}
