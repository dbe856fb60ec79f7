using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Kernels;

/// <summary>
/// An NF4 weight as the fused matmul kernels read it: the packed codes and the (double-quantized) absmax exactly
/// as Nf4Tensor stores them (bitsandbytes' layout, see <see cref="Nf4"/>). Element f of the flattened weight is
/// Code[nibble f]·absmax[f / BlockSize], the nibble being the high one of byte f/2 for even f; a nested absmax is
/// map[q]·scale + offset, rounded as <see cref="Nf4.DequantizeAbsmaxKernel"/> rounds it, so the fused product sees
/// the same f32 weights as the dequantize-then-GEMM path. Views that a form does not use hold any small buffer.
/// </summary>
public struct Nf4Weight
{
    public ArrayView<byte> Packed;
    public ArrayView<float> Code;
    public ArrayView<float> Absmax;       // f32 per block (not nested)
    public ArrayView<byte> AbsmaxCodes;   // 8-bit per block (nested)
    public ArrayView<float> NestedMap;    // 256 entries (nested)
    public ArrayView<float> NestedScale;  // one per NestedBlockSize blocks (nested)
    public float Offset;
    public int BlockSize, NestedBlockSize, Nested;

    public float BlockAbsmax(long block) => Nested != 0
        ? Nf4.MulRn(NestedMap[(int)AbsmaxCodes[block]], NestedScale[block / NestedBlockSize]) + Offset
        : Absmax[block];

    public float Value(long flat, float absmax)
    {
        int q = Packed[flat >> 1];
        return Code[(flat & 1) == 0 ? q >> 4 : q & 15] * absmax;
    }

    public float Load(long flat) => Value(flat, BlockAbsmax(flat / BlockSize));
}

/// <summary>
/// QLoRA's base product with the dequantization fused into the matmul: the dequantized weight never exists in
/// global memory. Both directions are one product C[rows, cols] (+)= A[rows, depth]·B with B[d, c] the weight
/// element at flat index c·colStride + d·depthStride, W being [out, in] row-major:
/// <list type="bullet">
/// <item>forward y = x·Wᵀ: A = x, depth = in, cols = out, colStride = in, depthStride = 1;</item>
/// <item>backward dx (+)= dy·W: A = dy, depth = out, cols = in, colStride = 1, depthStride = in.</item>
/// </list>
/// No gradient reaches the 4-bit weight (it is frozen). f32 accumulation; A and C in T through S.
/// <para>GPU variant (<see cref="TiledKernel{T,S}"/>): one group per output tile of (rowThreads·4) × (colThreads·4);
/// per step of <see cref="TileDepth"/> it stages the A tile and the dequantized W tile in shared memory (each
/// loaded along its unit-stride axis, so reads are coalesced in both directions), then every thread accumulates a
/// 4×4 register block. Shared tiles are stored depth-major with one float of padding per row to avoid bank
/// conflicts on the transposed stores.</para>
/// <para>CPU variant (<see cref="ColumnsKernel{T,S}"/>): barrier-free; each thread takes chunks of 4 output columns,
/// dequantizes those 4 columns once into its slice of a small f32 scratch (depth × 4, one absmax per 64-block run),
/// and reuses them for every row of A.</para>
/// </summary>
public static class Nf4Matmul
{
    /// <summary>Depth (K) of one shared-memory step of the GPU variant.</summary>
    public const int TileDepth = 32;

    /// <summary>Rows and columns of C each GPU thread accumulates (a 4×4 register block).</summary>
    public const int Micro = 4;

    // ---------------------------------------------------------------- GPU variant

    public static void TiledKernel<T, S>(ArrayView<T> a, Nf4Weight w, ArrayView<T> c, int rows, int depth, int cols,
        long colStride, long depthStride, int colThreads, int accumulate)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        int g = Group.DimX, t = Group.IdxX;
        int rowThreads = g / colThreads;
        int tileRows = rowThreads * Micro, tileCols = colThreads * Micro;
        int colTiles = (cols + tileCols - 1) / tileCols;
        int rowTile = Grid.IdxX / colTiles;
        int row0 = rowTile * tileRows, col0 = (Grid.IdxX - rowTile * colTiles) * tileCols;
        int ty = t / colThreads, tx = t - ty * colThreads;

        var sh = SharedMemory.GetDynamic<float>(); // [TileDepth, tileRows + 1] A tile, then [TileDepth, tileCols + 1] W tile
        int aStride = tileRows + 1, wStride = tileCols + 1;
        int wBase = TileDepth * aStride;
        // the 4×4 block as scalars: ILGPU does not unroll loops, so an indexed local array would live in local memory
        float c00 = 0f, c01 = 0f, c02 = 0f, c03 = 0f, c10 = 0f, c11 = 0f, c12 = 0f, c13 = 0f;
        float c20 = 0f, c21 = 0f, c22 = 0f, c23 = 0f, c30 = 0f, c31 = 0f, c32 = 0f, c33 = 0f;

        for (int d0 = 0; d0 < depth; d0 += TileDepth)
        {
            // A tile, consecutive threads along A's rows (its unit stride)
            for (int e = t; e < tileRows * TileDepth; e += g)
            {
                int r = e / TileDepth, kk = e - r * TileDepth;
                int row = row0 + r, d = d0 + kk;
                sh[kk * aStride + r] = row < rows && d < depth ? s.Load(a[(long)row * depth + d]) : 0f;
            }
            // W tile, dequantized on the way in; consecutive threads along the packed weight's unit stride
            for (int e = t; e < tileCols * TileDepth; e += g)
            {
                int cc, kk;
                if (depthStride == 1) { cc = e / TileDepth; kk = e - cc * TileDepth; }
                else { kk = e / tileCols; cc = e - kk * tileCols; }
                int col = col0 + cc, d = d0 + kk;
                sh[wBase + kk * wStride + cc] = col < cols && d < depth ? w.Load(col * colStride + d * depthStride) : 0f;
            }
            Group.Barrier();
            for (int kk = 0; kk < TileDepth; kk++)
            {
                // thread (ty, tx) owns rows ty + i·rowThreads and columns tx + j·colThreads: neighbours read neighbours
                int ai = kk * aStride + ty, wi = wBase + kk * wStride + tx;
                float a0 = sh[ai], a1 = sh[ai + rowThreads], a2 = sh[ai + 2 * rowThreads], a3 = sh[ai + 3 * rowThreads];
                float b0 = sh[wi], b1 = sh[wi + colThreads], b2 = sh[wi + 2 * colThreads], b3 = sh[wi + 3 * colThreads];
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
            }
            Group.Barrier(); // the next step overwrites the tiles
        }

        int r0 = row0 + ty, cBase = col0 + tx;
        StoreRow(s, c, r0, rows, cBase, colThreads, cols, c00, c01, c02, c03, accumulate);
        StoreRow(s, c, r0 + rowThreads, rows, cBase, colThreads, cols, c10, c11, c12, c13, accumulate);
        StoreRow(s, c, r0 + 2 * rowThreads, rows, cBase, colThreads, cols, c20, c21, c22, c23, accumulate);
        StoreRow(s, c, r0 + 3 * rowThreads, rows, cBase, colThreads, cols, c30, c31, c32, c33, accumulate);
    }

    // One thread's four results of a row: columns col, col + step, col + 2·step, col + 3·step (those inside C).
    private static void StoreRow<T, S>(S s, ArrayView<T> c, int row, int rows, int col, int step, int cols,
        float v0, float v1, float v2, float v3, int accumulate)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (row >= rows) return;
        long o = (long)row * cols + col;
        if (col < cols) Put(s, c, o, v0, accumulate);
        if (col + step < cols) Put(s, c, o + step, v1, accumulate);
        if (col + 2 * step < cols) Put(s, c, o + 2 * step, v2, accumulate);
        if (col + 3 * step < cols) Put(s, c, o + 3 * step, v3, accumulate);
    }

    // ---------------------------------------------------------------- CPU variant

    /// <summary>Columns of C per CPU work item (dequantized together, then reused across all rows).</summary>
    public const int CpuColumns = 4;

    public static void ColumnsKernel<T, S>(Index1D t, ArrayView<T> a, Nf4Weight w, ArrayView<T> c, ArrayView<float> scratch,
        int rows, int depth, int cols, long colStride, long depthStride, int accumulate, long items, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long slice = (long)(int)t * depth * CpuColumns; // this thread's [depth, 4] block of the scratch
        long end = Math.Min(items, (t + 1L) * chunk);
        for (long item = t * chunk; item < end; item++)
        {
            int c0 = (int)(item * CpuColumns);
            int width = Math.Min(CpuColumns, cols - c0);
            if (width < CpuColumns) // zero the unused columns so the row loop can always do four
                for (int d = 0; d < depth; d++)
                    for (int j = width; j < CpuColumns; j++) scratch[slice + (long)d * CpuColumns + j] = 0f;
            // dequantize along the weight's unit stride: forward walks each W row, backward each run of 4 in a row
            if (depthStride == 1)
                for (int j = 0; j < width; j++) DequantizeRun(w, (c0 + j) * colStride, depth, scratch, slice + j, CpuColumns);
            else
                for (int d = 0; d < depth; d++) DequantizeRun(w, d * depthStride + c0, width, scratch, slice + (long)d * CpuColumns, 1);

            for (int r = 0; r < rows; r++)
            {
                long aRow = (long)r * depth;
                float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
                for (int d = 0; d < depth; d++)
                {
                    float av = s.Load(a[aRow + d]);
                    long p = slice + (long)d * CpuColumns;
                    s0 += av * scratch[p];
                    s1 += av * scratch[p + 1];
                    s2 += av * scratch[p + 2];
                    s3 += av * scratch[p + 3];
                }
                long o = (long)r * cols + c0;
                Put(s, c, o, s0, accumulate);
                if (width > 1) Put(s, c, o + 1, s1, accumulate);
                if (width > 2) Put(s, c, o + 2, s2, accumulate);
                if (width > 3) Put(s, c, o + 3, s3, accumulate);
            }
        }
    }

    // Elements [flat, flat + count) of the weight into scratch[dst + i·dstStride], one absmax per block they cross.
    private static void DequantizeRun(Nf4Weight w, long flat, int count, ArrayView<float> scratch, long dst, int dstStride)
    {
        long stop = flat + count;
        while (flat < stop)
        {
            long block = flat / w.BlockSize;
            long blockEnd = Math.Min(stop, (block + 1) * w.BlockSize);
            float absmax = w.BlockAbsmax(block);
            for (; flat < blockEnd; flat++, dst += dstStride) scratch[dst] = w.Value(flat, absmax);
        }
    }

    private static void Put<T, S>(S s, ArrayView<T> c, long o, float v, int accumulate)
        where T : unmanaged where S : struct, IStorage<T> =>
        c[o] = s.Store(accumulate != 0 ? s.Load(c[o]) + v : v);

    // ---------------------------------------------------------------- launchers

    /// <summary>f32 elements of scratch the CPU variant needs for a product of this depth and width.</summary>
    public static long CpuScratchLength(KernelSet k, int depth, int cols)
    {
        var (threads, _) = k.ElementLaunch((cols + CpuColumns - 1) / CpuColumns);
        return Math.Max(1, (long)threads * depth * CpuColumns);
    }

    /// <summary>
    /// C[rows, cols] (+)= A[rows, depth]·B with B[d, c] = W at flat c·colStride + d·depthStride (see the class
    /// summary for the two directions): the GPU variant, shared-memory tiles.
    /// </summary>
    public static void RunGpu<T, S>(KernelSet k, ArrayView<T> a, Nf4Weight w, ArrayView<T> c,
        int rows, int depth, int cols, long colStride, long depthStride, bool accumulate)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (rows == 0 || cols == 0) return;
        int g = k.RowGroupSize;
        int colThreads = 1;
        while (colThreads * colThreads < g) colThreads *= 2; // square-ish thread grid: 16×16 for 256, 2×1 for 2
        if (g % colThreads != 0) throw new ArgumentException($"NF4 matmul needs a power-of-two group size, got {g}");
        int tileRows = g / colThreads * Micro, tileCols = colThreads * Micro;
        long groups = (long)((rows + tileRows - 1) / tileRows) * ((cols + tileCols - 1) / tileCols);
        if (groups > int.MaxValue) throw new ArgumentException($"NF4 matmul of [{rows}, {depth}] by [{depth}, {cols}] needs too many tiles ({groups})");
        var config = new KernelConfig((int)groups, g,
            SharedMemoryConfig.RequestDynamic<float>(TileDepth * (tileRows + 1 + tileCols + 1)));
        Action<ArrayView<T>, Nf4Weight, ArrayView<T>, int, int, int, long, long, int, int> kernel = TiledKernel<T, S>;
        k.Load(kernel, acc => acc.LoadStreamKernel(kernel))(config, a, w, c, rows, depth, cols, colStride, depthStride, colThreads, accumulate ? 1 : 0);
    }

    /// <summary>The same product, barrier-free (columns per thread) for the CPU accelerator; scratch as <see cref="CpuScratchLength"/>.</summary>
    public static void RunColumns<T, S>(KernelSet k, ArrayView<T> a, Nf4Weight w, ArrayView<T> c, ArrayView<float> scratch,
        int rows, int depth, int cols, long colStride, long depthStride, bool accumulate)
        where T : unmanaged where S : struct, IStorage<T>
    {
        if (rows == 0 || cols == 0) return;
        long items = (cols + CpuColumns - 1) / CpuColumns;
        var (threads, chunk) = k.ElementLaunch(items);
        if (scratch.Length < (long)threads * depth * CpuColumns)
            throw new ArgumentException($"NF4 matmul scratch has {scratch.Length} floats, needs {(long)threads * depth * CpuColumns} (CpuScratchLength)");
        k.Launch(ColumnsKernel<T, S>, threads, a, w, c, scratch, rows, depth, cols, colStride, depthStride, accumulate ? 1 : 0, items, chunk);
    }

    /// <summary>
    /// The float64 reference shared by the tests and `selfcheck --kernels`: y = x·Wᵀ and dx = dy·W (the gradient of Σ dy·y
    /// with respect to x, checked against finite differences in the tests) for W [out, in], the weights the NF4 state
    /// describes (<see cref="Nf4.Reference.Dequantize"/>).
    /// </summary>
    public static class Reference
    {
        public static (double[] Y, double[] Dx) Run(double[] x, double[] dy, double[] w, int rows, int inFeatures, int outFeatures)
        {
            var y = new double[rows * outFeatures];
            var dx = new double[rows * inFeatures];
            for (int r = 0; r < rows; r++)
                for (int o = 0; o < outFeatures; o++)
                    for (int i = 0; i < inFeatures; i++)
                    {
                        y[r * outFeatures + o] += x[r * inFeatures + i] * w[(long)o * inFeatures + i];
                        dx[r * inFeatures + i] += dy[r * outFeatures + o] * w[(long)o * inFeatures + i];
                    }
            return (y, dx);
        }
    }
}
