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
        Run(x.DType,
            () => Go<float, F32>(k, x, y, positions, cos, sin, tokens, heads, headDim, backward),
            () => Go<ushort, Bf16>(k, x, y, positions, cos, sin, tokens, heads, headDim, backward),
            () => Go<ushort, F16>(k, x, y, positions, cos, sin, tokens, heads, headDim, backward));
    }

    private static void Go<T, S>(KernelSet k, Tensor x, Tensor y, Tensor positions, Tensor cos, Tensor sin, int tokens, int heads, int headDim, bool backward)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (backward) Rope.Backward<T, S>(k, x.View<T>(), y.View<T>(), positions.View<int>(), cos.View<float>(), sin.View<float>(), tokens, heads, headDim);
        else Rope.Forward<T, S>(k, x.View<T>(), y.View<T>(), positions.View<int>(), cos.View<float>(), sin.View<float>(), tokens, heads, headDim);
    }

    /// <summary>Checks host-side that every position has a row in a table of maxPositions rows.</summary>
    public static void CheckPositions(ReadOnlySpan<int> positions, int maxPositions)
    {
        for (int i = 0; i < positions.Length; i++)
            if ((uint)positions[i] >= (uint)maxPositions)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} of token {i} is outside the RoPE table [0, {maxPositions})");
    }
}
