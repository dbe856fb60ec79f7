using ILGPU;
using ILGPU.Algorithms;

namespace NativeLora.Kernels;

/// <summary>
/// Group-wide reductions for the GPU kernel variants: warp shuffles first, then one value per warp
/// through shared memory, reduced again by shuffles in every warp so all threads get the result.
/// Needs a group size that is a multiple of the warp size with at most warpSize warps.
/// </summary>
public static class GroupReduce
{
    public static int ScratchLength(int groupSize, int warpSize) => Math.Max(1, groupSize / warpSize);

    public static float Sum(float value, ArrayView<float> scratch)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            value += Warp.ShuffleDown(value, offset);
        int warps = Group.DimX / Warp.WarpSize;
        Group.Barrier(); // the scratch may still be read by a previous reduction
        if (Warp.LaneIdx == 0) scratch[Warp.WarpIdx] = value;
        Group.Barrier();
        float total = Warp.LaneIdx < warps ? scratch[Warp.LaneIdx] : 0f;
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            total += Warp.ShuffleDown(total, offset);
        return Warp.Shuffle(total, 0);
    }

    public static float Max(float value, ArrayView<float> scratch)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            value = XMath.Max(value, Warp.ShuffleDown(value, offset));
        int warps = Group.DimX / Warp.WarpSize;
        Group.Barrier();
        if (Warp.LaneIdx == 0) scratch[Warp.WarpIdx] = value;
        Group.Barrier();
        float total = Warp.LaneIdx < warps ? scratch[Warp.LaneIdx] : float.NegativeInfinity;
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            total = XMath.Max(total, Warp.ShuffleDown(total, offset));
        return Warp.Shuffle(total, 0);
    }

    /// <summary>Σ over the lanes of one warp, every lane getting it (butterfly shuffles, no barrier): rows of one warp each.</summary>
    public static float WarpSum(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            value += Warp.ShuffleXor(value, offset);
        return value;
    }

    /// <summary>max over the lanes of one warp, every lane getting it.</summary>
    public static float WarpMax(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            value = XMath.Max(value, Warp.ShuffleXor(value, offset));
        return value;
    }
}
