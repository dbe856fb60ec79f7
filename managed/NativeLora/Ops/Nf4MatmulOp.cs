using NativeLora.Kernels;
using NativeLora.Quantization;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>
/// QLoRA's base product straight from the NF4 codes (kernels: Kernels/Nf4Matmul.cs): y = x·dequant(W)ᵀ and
/// dx (+)= dy·dequant(W), W [out, in]. No dequantized copy of W is made; the CPU variant uses a scratch of
/// threads × depth × 4 floats (a few hundred KB), the GPU variant none.
/// </summary>
public static class Nf4MatmulOp
{
    /// <summary>y [N, out] = x [N, in]·dequant(W)ᵀ; x and y share a float dtype (any, whatever W was quantized from).</summary>
    public static void Forward(KernelSet k, Nf4Tensor w, Tensor x, Tensor y)
    {
        var (outF, inF) = Dims(w);
        Check(x, inF, "x", w);
        Check(y, outF, "y", w);
        if (y.Dim(0) != x.Dim(0)) throw new ArgumentException($"NF4 matmul: y {y} needs as many rows as x {x}");
        SameDType(x.DType, (y, "y"));
        using var _profile = Diagnostics.OpProfiler.Time("nf4.matmul", x.Device);
        Product(k, w, x, y, depth: inF, cols: outF, colStride: inF, depthStride: 1, accumulate: false);
    }

    /// <summary>dx [N, in] = dy [N, out]·dequant(W), or dx += that with accumulate. No gradient reaches W (frozen).</summary>
    public static void BackwardData(KernelSet k, Nf4Tensor w, Tensor dy, Tensor dx, bool accumulate)
    {
        var (outF, inF) = Dims(w);
        Check(dy, outF, "dy", w);
        Check(dx, inF, "dx", w);
        if (dx.Dim(0) != dy.Dim(0)) throw new ArgumentException($"NF4 matmul: dx {dx} needs as many rows as dy {dy}");
        SameDType(dy.DType, (dx, "dx"));
        using var _profile = Diagnostics.OpProfiler.Time("nf4.matmul.bwd", dy.Device);
        Product(k, w, dy, dx, depth: outF, cols: inF, colStride: 1, depthStride: inF, accumulate);
    }

    private static void Product(KernelSet k, Nf4Tensor w, Tensor a, Tensor c, int depth, int cols, long colStride, long depthStride, bool accumulate)
    {
        int rows = a.Dim(0);
        var view = KernelView(w);
        Run(k, a.DType, new Call(k, view, a, c, rows, depth, cols, colStride, depthStride, accumulate));
    }

    private readonly record struct Call(KernelSet K, Nf4Weight W, Tensor A, Tensor C, int Rows, int Depth, int Cols, long ColStride, long DepthStride, bool Accumulate) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Nf4Matmul.RunGpu<T, S>(K, A.View<T>(), W, C.View<T>(), Rows, Depth, Cols, ColStride, DepthStride, Accumulate);

        // the barrier-free ILGPU kernel on the CPU accelerator, with a per-thread scratch that goes back to the pool after it
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            using var scratch = A.Device.Allocate(DType.F32, checked((int)Nf4Matmul.CpuScratchLength(K, Depth, Cols)));
            Nf4Matmul.RunColumns<T, S>(K, A.View<T>(), W, C.View<T>(), scratch.View<float>(), Rows, Depth, Cols, ColStride, DepthStride, Accumulate);
        }
    }

    /// <summary>The state's device tensors as the kernels take them; views a form does not use point at the code table.</summary>
    public static Nf4Weight KernelView(Nf4Tensor w) => new()
    {
        Packed = w.Packed.View<byte>(),
        Code = w.QuantMap.View<float>(),
        Absmax = w.Nested ? w.QuantMap.View<float>() : w.Absmax.View<float>(),
        AbsmaxCodes = w.Nested ? w.Absmax.View<byte>() : w.Packed.View<byte>(),
        NestedMap = w.Nested ? w.NestedQuantMap!.View<float>() : w.QuantMap.View<float>(),
        NestedScale = w.Nested ? w.NestedAbsmax!.View<float>() : w.QuantMap.View<float>(),
        Offset = w.Offset,
        BlockSize = w.BlockSize,
        NestedBlockSize = w.NestedBlockSize,
        Nested = w.Nested ? 1 : 0,
    };

    private static (int Out, int In) Dims(Nf4Tensor w)
    {
        if (w.Shape.Length != 2) throw new ArgumentException($"NF4 matmul needs a 2-D [out, in] weight, got shape [{string.Join(", ", w.Shape)}]");
        return (w.Shape[0], w.Shape[1]);
    }

    private static void Check(Tensor t, int features, string name, Nf4Tensor w)
    {
        if (t.Rank != 2 || t.Dim(1) != features)
            throw new ArgumentException($"NF4 matmul: {name} must be [N, {features}] for the weight [{w.Shape[0]}, {w.Shape[1]}], got {t}");
        if (!t.DType.IsFloat()) throw new ArgumentException($"NF4 matmul: {name} must be f32, bf16 or f16, got {t}");
    }
}
