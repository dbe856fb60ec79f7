using NativeLora.Tensors;

namespace NativeLora.Ops;

/// <summary>Picks the kernel instance for a tensor's float dtype (kernels are generic over storage).</summary>
internal static class FloatDispatch
{
    public static void Run(DType dtype, Action f32, Action bf16, Action f16)
    {
        switch (dtype)
        {
            case DType.F32: f32(); break;
            case DType.BF16: bf16(); break;
            case DType.F16: f16(); break;
            default: throw new ArgumentException($"this op needs a float tensor (f32, bf16, f16), got {dtype.Name()}");
        }
    }

    public static void Require(Tensor t, DType dtype, string name)
    {
        if (t.DType != dtype) throw new ArgumentException($"{name} must be {dtype.Name()}, got {t}");
    }

    public static void RequireElements(Tensor t, long count, string name)
    {
        if (t.ElementCount != count) throw new ArgumentException($"{name} must have {count} elements, got {t}");
    }

    public static void SameDType(DType dtype, params (Tensor T, string Name)[] tensors)
    {
        foreach (var (t, name) in tensors)
            if (t.DType != dtype) throw new ArgumentException($"{name} must be {dtype.Name()} like the input, got {t}");
    }
}
