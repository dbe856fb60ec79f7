using NativeLora.Devices;

namespace NativeLora.Quantization;

/// <summary>
/// How a QLoRA layer computes its base product x·W0ᵀ (and dy·W0) from the NF4 weight (config key
/// <c>qlora_matmul</c>):
/// <list type="bullet">
/// <item><see cref="Scratch"/>: dequantize the layer into a pooled buffer, then the native GEMM (cuBLAS / OpenBLAS);</item>
/// <item><see cref="Fused"/>: the Nf4Matmul kernels read the 4-bit codes inside the product, nothing dequantized
/// is written to global memory (DoRA layers still take the scratch: their column norms need the dense W0);</item>
/// <item><see cref="Auto"/>: per backend, see <see cref="PicksFused"/>.</item>
/// </list>
/// </summary>
public enum QloraMatmul
{
    Auto,
    Fused,
    Scratch,
}

public static class QloraMatmulChoice
{
    public static QloraMatmul Parse(string s) => s switch
    {
        "auto" => QloraMatmul.Auto,
        "fused" => QloraMatmul.Fused,
        "scratch" => QloraMatmul.Scratch,
        _ => throw new ArgumentException($"qlora_matmul must be auto, fused or scratch, got '{s}'"),
    };

    /// <summary>
    /// Whether <paramref name="mode"/> computes a product of <paramref name="rows"/> rows with the fused kernels on
    /// <paramref name="device"/>. Auto picks the scratch on both backends (bench/RESULTS.md, Nf4MatmulBenchmarks):
    /// <list type="bullet">
    /// <item>CPU, measured: OpenBLAS after a dequantize beats ILGPU's emulated inner loop ~70× at N = 512 and ~2× at
    /// N = 1, where both are dominated by reading every weight once;</item>
    /// <item>CUDA, not measured yet (no GPU has run this code): expected the same, since cuBLAS's bf16 tensor cores
    /// outrun the f32 shared-memory tiles at training sizes and the dequantize pass costs two passes over a bf16
    /// weight; at decode sizes the tiled kernel has only out/64 groups. The GPU bundle's run of the benchmark is
    /// what should set this branch (rows is here so a measured crossover can be expressed).</item>
    /// </list>
    /// </summary>
    public static bool PicksFused(QloraMatmul mode, ComputeDevice device, int rows) => mode switch
    {
        QloraMatmul.Fused => true,
        QloraMatmul.Scratch => false,
        _ => device.IsCuda ? AutoFusedOnCuda(rows) : false,
    };

    // Unmeasured expectation (see above); replace with the crossover the GPU benchmark finds.
    private static bool AutoFusedOnCuda(int rows) => false;
}
