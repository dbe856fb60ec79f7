using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>One tensor RoPE rotates: x [tokens, heads·headDim] into y (y may be x itself).</summary>
public readonly record struct Rotated(Tensor X, Tensor Y, int Heads);

/// <summary>
/// Rotary embedding on tensors (kernels: Kernels/Rope.cs); cos/sin: f32 [maxPos, headDim/2]; positions: I32 [tokens].
/// A layer rotates q and k together: one launch over both on a GPU.
/// </summary>
public static class RopeOp
{
    public static void Forward(KernelSet k, Rotated a, Rotated? b, Tensor positions, Tensor cos, Tensor sin, int headDim) =>
        Apply(k, a, b, positions, cos, sin, headDim, backward: false);

    /// <summary>dx from dy (rotation by −angle): X holds dy, Y receives dx.</summary>
    public static void Backward(KernelSet k, Rotated a, Rotated? b, Tensor positions, Tensor cos, Tensor sin, int headDim) =>
        Apply(k, a, b, positions, cos, sin, headDim, backward: true);

    private static void Apply(KernelSet k, Rotated a, Rotated? b, Tensor positions, Tensor cos, Tensor sin, int headDim, bool backward)
    {
        using var _profile = Diagnostics.OpProfiler.Time("rope", a.X.Device);
        Require(positions, DType.I32, "positions");
        Require(cos, DType.F32, "cos");
        Require(sin, DType.F32, "sin");
        int tokens = (int)positions.ElementCount;
        foreach (var r in b is { } second ? new[] { a, second } : new[] { a })
        {
            RequireElements(r.X, (long)tokens * r.Heads * headDim, "input");
            RequireElements(r.Y, r.X.ElementCount, "output");
            SameDType(a.X.DType, (r.X, "input"), (r.Y, "output"));
        }
        if (cos.Dim(-1) != headDim / 2) throw new ArgumentException($"RoPE table {cos} does not match head dimension {headDim}");
        var bb = b ?? new Rotated(a.X, a.Y, 0);
        Run(k, a.X.DType, new RotateCall(k, a, bb, positions, cos, sin, tokens, headDim, backward ? -1f : 1f));
    }

    private readonly record struct RotateCall(KernelSet K, Rotated A, Rotated B, Tensor Positions, Tensor Cos, Tensor Sin, int Tokens, int HeadDim, float Sign) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Rope.RotateGpu<T, S>(K, A.X.View<T>(), A.Y.View<T>(), B.X.View<T>(), B.Y.View<T>(), Positions.View<int>(), Cos.View<float>(), Sin.View<float>(),
                Tokens, A.Heads, B.Heads, HeadDim, Sign);

        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            foreach (var r in B.Heads > 0 ? new[] { A, B } : new[] { A })
                Rope.RotateCpu<T, S>(r.X.Host<T>(), r.Y.Host<T>(), Positions.Host<int>(), Cos.Host<float>(), Sin.Host<float>(), Tokens, r.Heads, HeadDim, Sign);
        }
    }

    /// <summary>Checks host-side that every position has a row in a table of maxPositions rows.</summary>
    public static void CheckPositions(ReadOnlySpan<int> positions, int maxPositions)
    {
        for (int i = 0; i < positions.Length; i++)
            if ((uint)positions[i] >= (uint)maxPositions)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} of token {i} is outside the RoPE table [0, {maxPositions})");
    }
}
