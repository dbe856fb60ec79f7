using NativeLora.Kernels;
using NativeLora.Tensors;

namespace NativeLora.Ops;

/// <summary>An op's kernel call written once for every float storage (T, S): f32, bf16 or f16.</summary>
internal interface IFloatOp
{
    void Run<T, S>() where T : unmanaged where S : struct, IStorage<T>;
}

/// <summary>
/// An op with two implementations: the ILGPU kernels (the GPU variants; tests also run them on ILGPU's CPU
/// accelerator) and the host SIMD kernels, the CPU's implementation. <see cref="FloatDispatch.Run{TOp}(KernelSet, DType, TOp)"/>
/// picks one from <see cref="KernelSet.GpuVariants"/>, the single switch the device sets.
/// </summary>
internal interface IVariantOp
{
    void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T>;
    void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T>;
}

/// <summary>Picks the kernel instance for a tensor's float dtype, and the variant for the device (kernels are generic over storage).</summary>
internal static class FloatDispatch
{
    public static void Run<TOp>(DType dtype, TOp op) where TOp : struct, IFloatOp
    {
        switch (dtype)
        {
            case DType.F32: op.Run<float, F32>(); break;
            case DType.BF16: op.Run<ushort, Bf16>(); break;
            case DType.F16: op.Run<ushort, F16>(); break;
            default: throw NotFloat(dtype);
        }
    }

    /// <summary>The one place an op's variant is chosen: GPU kernels or the CPU's host kernels.</summary>
    public static void Run<TOp>(KernelSet k, DType dtype, TOp op) where TOp : struct, IVariantOp =>
        Run(dtype, new Variant<TOp>(k.GpuVariants, op));

    private readonly struct Variant<TOp>(bool gpu, TOp op) : IFloatOp where TOp : struct, IVariantOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            if (gpu) op.Gpu<T, S>();
            else op.Cpu<T, S>();
        }
    }

    private static ArgumentException NotFloat(DType dtype) => new($"this op needs a float tensor (f32, bf16, f16), got {dtype.Name()}");

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
