using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>Rotary embedding on tensors (kernels: Kernels/Rope.cs). x: [tokens, heads·headDim]; cos/sin: f32 [maxPos, headDim/2]; positions: I32 [tokens].</summary>
public static class RopeOp
{
    public static void Forward(KernelSet k, Tensor x, Tensor y, Tensor positions, Tensor cos, Tensor sin, int heads, int headDim) =>
        Apply(k, x, y, positions, cos, sin, heads, headDim, backward: false);

    /// <summary>dx from dy (rotation by −angle). dx may be dy itself.</summary>
    public static void Backward(KernelSet k, Tensor dy, Tensor dx, Tensor positions, Tensor cos, Tensor sin, int heads, int headDim) =>
        Apply(k, dy, dx, positions, cos, sin, heads, headDim, backward: true);

    private static void Apply(KernelSet k, Tensor x, Tensor y, Tensor positions, Tensor cos, Tensor sin, int heads, int headDim, bool backward)
    {
        using var _profile = Diagnostics.OpProfiler.Time("rope", x.Device);
        Require(positions, DType.I32, "positions");
        Require(cos, DType.F32, "cos");
        Require(sin, DType.F32, "sin");
        int tokens = (int)positions.ElementCount;
        RequireElements(x, (long)tokens * heads * headDim, "input");
        RequireElements(y, x.ElementCount, "output");
        SameDType(x.DType, (y, "output"));
        if (cos.Dim(-1) != headDim / 2) throw new ArgumentException($"RoPE table {cos} does not match head dimension {headDim}");
        Run(k, x.DType, new RotateCall(k, x, y, positions, cos, sin, tokens, heads, headDim, backward));
    }

    private readonly record struct RotateCall(KernelSet K, Tensor X, Tensor Y, Tensor Positions, Tensor Cos, Tensor Sin, int Tokens, int Heads, int HeadDim, bool Backward) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            if (Backward) Rope.BackwardGpu<T, S>(K, X.View<T>(), Y.View<T>(), Positions.View<int>(), Cos.View<float>(), Sin.View<float>(), Tokens, Heads, HeadDim);
            else Rope.ForwardGpu<T, S>(K, X.View<T>(), Y.View<T>(), Positions.View<int>(), Cos.View<float>(), Sin.View<float>(), Tokens, Heads, HeadDim);
        }

        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Rope.RotateCpu<T, S>(X.Host<T>(), Y.Host<T>(), Positions.Host<int>(), Cos.Host<float>(), Sin.Host<float>(), Tokens, Heads, HeadDim, Backward ? -1f : 1f);
    }

    /// <summary>Checks host-side that every position has a row in a table of maxPositions rows.</summary>
    public static void CheckPositions(ReadOnlySpan<int> positions, int maxPositions)
    {
        for (int i = 0; i < positions.Length; i++)
            if ((uint)positions[i] >= (uint)maxPositions)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} of token {i} is outside the RoPE table [0, {maxPositions})");
    }
}
